;; send_flood: sends 1,000 messages to the agent named "sink" for every message it gets
;; (an agent flooding a neighbour); a full queue answers BUSY and it carries on.
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (data (i32.const 2048) "{\"performative\":\"inform\",\"receiver\":\"sink\",\"content\":\"flood\"}")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "handle_message") (param i32 i32) (result i32)
    (local $i i32)
    (loop $again
      (drop (call $send (i32.const 2048) (i32.const 61)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))
    (i32.const 0))
)
