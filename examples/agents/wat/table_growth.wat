;; table_growth: grows its function table by 10,000 entries per message until the
;; engine refuses (table.grow returns -1), then traps.
(module
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (if (i32.eq (table.grow $t (ref.null func) (i32.const 10000)) (i32.const -1))
      (then unreachable))
    (i32.const 0))
)
