;; host_spin: calls a host function (now_us) in a loop that never ends: stopped by fuel or
;; the wall-time limit like a plain loop, though most of its time is spent in the host.
(module
  (import "caxton" "now_us" (func $now_us (result i64)))
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (loop $forever
      (drop (call $now_us))
      (br $forever))
    (i32.const 0))
)
