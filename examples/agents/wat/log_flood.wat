;; log_flood: logs 5,000 lines of 200 bytes for every message (an agent filling the node's
;; log). The node keeps 50 lines at once, then 10 a second, per agent (docs/security.md).
(module
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (data (i32.const 2048) "log flood: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "handle_message") (param i32 i32) (result i32)
    (local $i i32)
    (loop $again
      (call $log (i32.const 2) (i32.const 2048) (i32.const 200))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 5000))))
    (i32.const 0))
)
