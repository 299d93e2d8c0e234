;; no_handler: a valid agent module that cannot receive messages (no handle_message).
;; It deploys; a message to it is answered by the node, not by the agent.
(module
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (@custom "caxton.abi" "\01")
  (memory (export "memory") 1)
  (data (i32.const 16) "no_handler started")
  (func (export "agent_init")
    (call $log (i32.const 2) (i32.const 16) (i32.const 18)))
)
