;; legacy: written against the earlier runtime's `env` imports, without an ABI declaration
;; (accepted as v1). On each message it logs, reads the clock (milliseconds), and sends
;; the 8 bytes of that time to the agent named "observer" with env.send_message.
(module
  (import "env" "log" (func $log (param i32 i32)))
  (import "env" "get_time" (func $get_time (result i64)))
  (import "env" "send_message" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "legacy agent got a message")   ;; 26 bytes
  (data (i32.const 48) "observer\00")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (call $log (i32.const 16) (i32.const 26))
    (i64.store (i32.const 64) (call $get_time))
    (call $send (i32.const 48) (i32.const 64) (i32.const 8)))
)
