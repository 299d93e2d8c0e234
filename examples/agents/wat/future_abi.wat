;; future_abi: declares agent ABI v99 through the exported global; must be refused at deploy.
(module
  (global (export "caxton_abi_version") i32 (i32.const 99))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32) (i32.const 0))
)
