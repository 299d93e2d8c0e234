;; echo: answers every message with an `inform` whose content is the received content.
;;
;; Agent ABI v1 (docs/agent-abi.md) in plain WebAssembly text: a bump allocator,
;; a small scanner that finds the raw JSON value of "content", and caxton.reply.
(module
  (import "caxton" "reply" (func $reply (param i32 i32) (result i32)))
  (@custom "caxton.abi" "\01")

  (memory (export "memory") 1)
  ;; Reply template pieces.
  (data (i32.const 16) "{\"performative\":\"inform\",\"content\":")   ;; 35 bytes at 16
  (data (i32.const 64) "\"content\"")                                ;; 9 bytes at 64
  (data (i32.const 80) "null")                                       ;; 4 bytes at 80

  (global $heap_base i32 (i32.const 1024))
  (global $heap (mut i32) (i32.const 1024))

  ;; alloc(len) -> ptr: bump allocation, growing memory when needed.
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7))
                             (i32.const -8)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (local.set $pages (i32.add (i32.shr_u (i32.sub (local.get $end)
                                                       (i32.mul (memory.size) (i32.const 65536)))
                                              (i32.const 16))
                                   (i32.const 1)))
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; dealloc: one message at a time, so freeing resets the heap.
  (func (export "dealloc") (param i32 i32)
    (global.set $heap (global.get $heap_base)))

  ;; Index of the first byte after the JSON value starting at $i (bounded by $end).
  (func $value_end (param $i i32) (param $end i32) (result i32)
    (local $c i32) (local $depth i32) (local $in_str i32)
    (if (i32.ge_u (local.get $i) (local.get $end)) (then (return (local.get $end))))
    (local.set $c (i32.load8_u (local.get $i)))
    ;; string
    (if (i32.eq (local.get $c) (i32.const 34))
      (then
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (block $done
          (loop $scan
            (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
            (local.set $c (i32.load8_u (local.get $i)))
            (if (i32.eq (local.get $c) (i32.const 92))
              (then (local.set $i (i32.add (local.get $i) (i32.const 2))) (br $scan)))
            (if (i32.eq (local.get $c) (i32.const 34))
              (then (return (i32.add (local.get $i) (i32.const 1)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
        (return (local.get $end))))
    ;; object or array
    (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
      (then
        (block $done
          (loop $scan
            (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
            (local.set $c (i32.load8_u (local.get $i)))
            (if (local.get $in_str)
              (then
                (if (i32.eq (local.get $c) (i32.const 92))
                  (then (local.set $i (i32.add (local.get $i) (i32.const 1)))))
                (if (i32.eq (local.get $c) (i32.const 34))
                  (then (local.set $in_str (i32.const 0)))))
              (else
                (if (i32.eq (local.get $c) (i32.const 34))
                  (then (local.set $in_str (i32.const 1))))
                (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
                  (then (local.set $depth (i32.add (local.get $depth) (i32.const 1)))))
                (if (i32.or (i32.eq (local.get $c) (i32.const 125)) (i32.eq (local.get $c) (i32.const 93)))
                  (then
                    (local.set $depth (i32.sub (local.get $depth) (i32.const 1)))
                    (if (i32.eqz (local.get $depth))
                      (then (return (i32.add (local.get $i) (i32.const 1)))))))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
        (return (local.get $end))))
    ;; number, true, false, null: up to a delimiter
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $i)))
        (br_if $done (i32.eq (local.get $c) (i32.const 44)))   ;; ,
        (br_if $done (i32.eq (local.get $c) (i32.const 125)))  ;; }
        (br_if $done (i32.eq (local.get $c) (i32.const 93)))   ;; ]
        (br_if $done (i32.le_u (local.get $c) (i32.const 32))) ;; whitespace
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (local.get $i))

  ;; Start of the value of "content" in [ptr, ptr+len), or 0 when absent.
  (func $find_content (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $end i32) (local $c i32)
    (local.set $i (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $not_found
      (loop $search
        (br_if $not_found (i32.gt_u (i32.add (local.get $i) (i32.const 9)) (local.get $end)))
        (if (i32.and
              (i64.eq (i64.load (local.get $i)) (i64.load (i32.const 64)))
              (i32.eq (i32.load8_u (i32.add (local.get $i) (i32.const 8))) (i32.const 34)))
          (then
            (local.set $i (i32.add (local.get $i) (i32.const 9)))
            ;; skip whitespace and one colon
            (block $value
              (loop $skip
                (br_if $value (i32.ge_u (local.get $i) (local.get $end)))
                (local.set $c (i32.load8_u (local.get $i)))
                (if (i32.or (i32.le_u (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 58)))
                  (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $skip)))))
            (return (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $search)))
    (i32.const 0))

  (func (export "handle_message") (param $ptr i32) (param $len i32) (result i32)
    (local $start i32) (local $stop i32) (local $vlen i32) (local $out i32) (local $vsrc i32)
    (local.set $start (call $find_content (local.get $ptr) (local.get $len)))
    (if (local.get $start)
      (then
        (local.set $stop (call $value_end (local.get $start)
                                          (i32.add (local.get $ptr) (local.get $len))))
        (local.set $vsrc (local.get $start))
        (local.set $vlen (i32.sub (local.get $stop) (local.get $start))))
      (else
        (local.set $vsrc (i32.const 80))
        (local.set $vlen (i32.const 4))))
    (local.set $out (call $alloc (i32.add (local.get $vlen) (i32.const 36))))
    (if (i32.eqz (local.get $out)) (then (return (i32.const -1))))
    (memory.copy (local.get $out) (i32.const 16) (i32.const 35))
    (memory.copy (i32.add (local.get $out) (i32.const 35)) (local.get $vsrc) (local.get $vlen))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $vlen) (i32.const 35))) (i32.const 125))
    (drop (call $reply (local.get $out) (i32.add (local.get $vlen) (i32.const 36))))
    (i32.const 0))
)
