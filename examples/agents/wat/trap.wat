;; trap: executes `unreachable` on every message.
(module
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    unreachable)
)
