//! Combinators (placeholder while the core compiles).
use crate::task::Task;
/// placeholder
pub struct Shielded<T>(Task<T>);
pub(crate) fn shield_task<T>(t: Task<T>) -> Shielded<T> {
    Shielded(t)
}
