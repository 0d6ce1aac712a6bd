//! Lock-free set-associative translation caches with the hardware's invalidation semantics.
