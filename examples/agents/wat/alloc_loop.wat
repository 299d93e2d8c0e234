;; alloc_loop: takes one more 64 KiB page of memory with every message and never gives
;; it back, until its memory limit refuses the page; then it traps.
(module
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
      (then unreachable))
    (i32.const 0))
)
