;; memory_bomb: grows its memory one page at a time until growth fails, then traps
;; (what an allocator does when malloc finally returns NULL).
(module
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)
)
