"""Rules every send passes through: frequency caps, quiet hours, throttling, expiry.

See docs/send-rules.md. `windows` and `caps` are pure (the decision for one instant);
`rules` is the workspace's rules and their store; `gate` decides and claims a send in the send
activity's transaction; `throttle` names the per-channel send task queues."""
