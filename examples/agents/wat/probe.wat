;; probe: exercises every host function of agent ABI v1; used by the conformance suite.
;;
;; The first byte of a message is a command (the sandbox does not parse messages, so
;; the suite can drive the agent with raw bytes):
;;   G<n>   memory.grow by n pages (n is a byte); returns the result
;;   T<n>   table.grow by n*100 elements; returns the result
;;   K<v>   kv_store("k", v), size query, kv_load, reply(value), kv_delete;
;;          returns kv_load("k") after the delete (-3, not found)
;;   X<v>   kv_store("k", v) then kv_load into a 2-byte buffer; returns the result
;;   R      random(16 bytes), reply(them); returns random's status
;;   N      reply(now_us as 8 little-endian bytes)
;;   S<m>   send(m); returns send's status
;;   P<m>   reply(m); returns reply's status
;;   L<d><t> log(level d, text t)
;;   M      timer_set(10 ms, repeat); reply(id as 8 bytes)
;;   C<id>  timer_cancel(8-byte id); returns the status
;;   B      reply with a pointer outside memory; returns the status (-1)
;;   W      fill 1 MiB of memory in a loop (burns fuel), returns 0
;; handle_timer(id) sends the id as 8 bytes; agent_init/agent_shutdown log "init"/"shutdown".
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (import "caxton" "reply" (func $reply (param i32 i32) (result i32)))
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (import "caxton" "now_us" (func $now_us (result i64)))
  (import "caxton" "random" (func $random (param i32 i32) (result i32)))
  (import "caxton" "kv_store" (func $kv_store (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "kv_load" (func $kv_load (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "kv_delete" (func $kv_delete (param i32 i32) (result i32)))
  (import "caxton" "timer_set" (func $timer_set (param i64 i32) (result i64)))
  (import "caxton" "timer_cancel" (func $timer_cancel (param i64) (result i32)))
  (@custom "caxton.abi" "\01")

  (memory (export "memory") 1)
  (table $t 1 funcref)
  (data (i32.const 16) "k")
  (data (i32.const 32) "init")
  (data (i32.const 48) "shutdown")
  ;; scratch buffer: 256..511; heap from 1024

  (global $heap (mut i32) (i32.const 1024))

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7))
                             (i32.const -8)))
    (block $fits
      (loop $grow
        (br_if $fits (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (return (i32.const 0))))
        (br $grow)))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "dealloc") (param i32 i32)
    (global.set $heap (i32.const 1024)))

  (func (export "agent_init") (call $log (i32.const 2) (i32.const 32) (i32.const 4)))
  (func (export "agent_shutdown") (call $log (i32.const 2) (i32.const 48) (i32.const 8)))

  (func (export "handle_timer") (param $id i64)
    (i64.store (i32.const 256) (local.get $id))
    (drop (call $send (i32.const 256) (i32.const 8))))

  (func (export "handle_message") (param $ptr i32) (param $len i32) (result i32)
    (local $cmd i32) (local $n i32) (local $buf i32) (local $i i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const -100))))
    (local.set $cmd (i32.load8_u (local.get $ptr)))
    ;; G
    (if (i32.eq (local.get $cmd) (i32.const 71))
      (then (return (memory.grow (i32.load8_u offset=1 (local.get $ptr))))))
    ;; T
    (if (i32.eq (local.get $cmd) (i32.const 84))
      (then (return (table.grow $t (ref.null func)
                      (i32.mul (i32.load8_u offset=1 (local.get $ptr)) (i32.const 100))))))
    ;; K
    (if (i32.eq (local.get $cmd) (i32.const 75))
      (then
        (local.set $n (call $kv_store (i32.const 16) (i32.const 1)
                        (i32.add (local.get $ptr) (i32.const 1))
                        (i32.sub (local.get $len) (i32.const 1))))
        (if (local.get $n) (then (return (local.get $n))))
        (local.set $n (call $kv_load (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 0)))
        (local.set $buf (call $alloc (local.get $n)))
        (local.set $n (call $kv_load (i32.const 16) (i32.const 1) (local.get $buf) (local.get $n)))
        (drop (call $reply (local.get $buf) (local.get $n)))
        (drop (call $kv_delete (i32.const 16) (i32.const 1)))
        (return (call $kv_load (i32.const 16) (i32.const 1) (local.get $buf) (i32.const 0)))))
    ;; X
    (if (i32.eq (local.get $cmd) (i32.const 88))
      (then
        (drop (call $kv_store (i32.const 16) (i32.const 1)
                (i32.add (local.get $ptr) (i32.const 1))
                (i32.sub (local.get $len) (i32.const 1))))
        (return (call $kv_load (i32.const 16) (i32.const 1) (i32.const 256) (i32.const 2)))))
    ;; R
    (if (i32.eq (local.get $cmd) (i32.const 82))
      (then
        (local.set $n (call $random (i32.const 256) (i32.const 16)))
        (drop (call $reply (i32.const 256) (i32.const 16)))
        (return (local.get $n))))
    ;; N
    (if (i32.eq (local.get $cmd) (i32.const 78))
      (then
        (i64.store (i32.const 256) (call $now_us))
        (return (call $reply (i32.const 256) (i32.const 8)))))
    ;; S
    (if (i32.eq (local.get $cmd) (i32.const 83))
      (then (return (call $send (i32.add (local.get $ptr) (i32.const 1))
                                (i32.sub (local.get $len) (i32.const 1))))))
    ;; P
    (if (i32.eq (local.get $cmd) (i32.const 80))
      (then (return (call $reply (i32.add (local.get $ptr) (i32.const 1))
                                 (i32.sub (local.get $len) (i32.const 1))))))
    ;; L
    (if (i32.eq (local.get $cmd) (i32.const 76))
      (then
        (call $log (i32.sub (i32.load8_u offset=1 (local.get $ptr)) (i32.const 48))
                   (i32.add (local.get $ptr) (i32.const 2))
                   (i32.sub (local.get $len) (i32.const 2)))
        (return (i32.const 0))))
    ;; M
    (if (i32.eq (local.get $cmd) (i32.const 77))
      (then
        (i64.store (i32.const 256) (call $timer_set (i64.const 10) (i32.const 1)))
        (return (call $reply (i32.const 256) (i32.const 8)))))
    ;; C
    (if (i32.eq (local.get $cmd) (i32.const 67))
      (then (return (call $timer_cancel (i64.load offset=1 (local.get $ptr))))))
    ;; B
    (if (i32.eq (local.get $cmd) (i32.const 66))
      (then (return (call $reply (i32.const 0xFFFFFF00) (i32.const 1000)))))
    ;; W
    (if (i32.eq (local.get $cmd) (i32.const 87))
      (then
        (local.set $buf (call $alloc (i32.const 1048576)))
        (if (i32.eqz (local.get $buf)) (then (return (i32.const -1))))
        (block $done
          (loop $fill
            (br_if $done (i32.ge_u (local.get $i) (i32.const 1048576)))
            (i32.store8 (i32.add (local.get $buf) (local.get $i)) (local.get $i))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $fill)))
        (return (i32.const 0))))
    (i32.const -101))
)
