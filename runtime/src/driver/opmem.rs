//! Op storage that is reused: the boxes that hold an io_uring op's data while the kernel holds
//! its SQE.
//!
//! An op's data must not move while its SQE is in flight, so it lives in a heap box from the
//! moment its entry is built until its completion. A server sends one op per message, so a box
//! per op would be an allocation and a free per message. The driver keeps the memory of
//! finished ops instead, in free lists by layout, and the next op of the same layout takes it
//! back: in steady state an op costs no allocation.
//!
//! A box handed out here is an ordinary `Box<T>`, allocated by the global allocator with
//! `Layout::new::<T>()`: a free list holds only memory of exactly that layout, so dropping such
//! a box the usual way (an orphaned op, finished later as a `Box<dyn Orphan>`) is as sound as
//! handing it back.

use std::alloc::{dealloc, Layout};
use std::ptr::NonNull;

/// Free blocks kept per layout; beyond that a finished op's memory goes back to the allocator.
/// Enough for the sends of every ready connection of a 10 000-connection server in one loop
/// iteration, and a bound on what an idle server keeps.
const KEEP_PER_LAYOUT: usize = 4096;

/// Free lists of op memory, by layout. Belongs to one driver (`!Send`).
#[derive(Default)]
pub(crate) struct OpMemory {
    /// A handful of layouts (one per op kind in use), searched linearly.
    classes: Vec<Class>,
}

struct Class {
    layout: Layout,
    /// Blocks allocated by the global allocator with `layout`, holding no value.
    free: Vec<NonNull<u8>>,
}

impl OpMemory {
    /// Moves `value` into a box, reusing a free block of its layout when there is one.
    pub(crate) fn boxed<T>(&mut self, value: T) -> Box<T> {
        let layout = Layout::new::<T>();
        if layout.size() == 0 {
            return Box::new(value);
        }
        let block = self
            .classes
            .iter_mut()
            .find(|c| c.layout == layout)
            .and_then(|c| c.free.pop());
        match block {
            Some(block) => {
                let p = block.as_ptr().cast::<T>();
                // SAFETY: `block` was allocated by the global allocator with exactly
                // `Layout::new::<T>()` (a class holds only blocks of its layout, see `unboxed`)
                // and holds no value; writing `value` makes it a valid `T` that `Box` may own
                // and free with that same layout.
                unsafe {
                    p.write(value);
                    Box::from_raw(p)
                }
            }
            None => Box::new(value),
        }
    }

    /// Moves the value out of `b` and keeps its memory for the next op of the same layout.
    pub(crate) fn unboxed<T>(&mut self, b: Box<T>) -> T {
        let layout = Layout::new::<T>();
        if layout.size() == 0 {
            return *b;
        }
        let raw = Box::into_raw(b);
        // SAFETY: `raw` came from a live box: valid and initialised; after this read the block
        // holds no value and is never read as a `T` again.
        let value = unsafe { raw.read() };
        // SAFETY: a box's pointer is never null (the size is not zero).
        let block = unsafe { NonNull::new_unchecked(raw.cast::<u8>()) };
        let class = match self.classes.iter().position(|c| c.layout == layout) {
            Some(i) => &mut self.classes[i],
            None => {
                self.classes.push(Class {
                    layout,
                    free: Vec::new(),
                });
                self.classes.last_mut().expect("just pushed")
            }
        };
        if class.free.len() < KEEP_PER_LAYOUT {
            class.free.push(block);
        } else {
            // SAFETY: the block was allocated by the global allocator with `layout` (it was a
            // `Box<T>`) and holds no value.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
        value
    }

    /// Free blocks kept, over all layouts.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.classes.iter().map(|c| c.free.len()).sum()
    }
}

impl Drop for OpMemory {
    fn drop(&mut self) {
        for class in &mut self.classes {
            for block in class.free.drain(..) {
                // SAFETY: every kept block was allocated with its class's layout and holds no
                // value.
                unsafe { dealloc(block.as_ptr(), class.layout) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_finished_box_is_reused_by_the_next_value_of_its_layout() {
        let mut mem = OpMemory::default();
        let b = mem.boxed([1u64; 4]);
        let addr = &*b as *const [u64; 4] as usize;
        assert_eq!(mem.unboxed(b), [1; 4]);
        assert_eq!(mem.kept(), 1);
        // Another type of the same layout takes the same block.
        let c = mem.boxed((2u64, 3u64, 4u64, 5u64));
        assert_eq!(&*c as *const (u64, u64, u64, u64) as usize, addr);
        assert_eq!(*c, (2, 3, 4, 5));
        assert_eq!(mem.kept(), 0);
        // Dropped as an ordinary box: freed by the allocator, nothing kept.
        drop(c);
        assert_eq!(mem.kept(), 0);
    }

    #[test]
    fn layouts_are_kept_apart_and_values_are_moved_out_whole() {
        let mut mem = OpMemory::default();
        let tracker = Rc::new(());
        let a = mem.boxed((Rc::clone(&tracker), 7u8));
        let b = mem.boxed(vec![1u32, 2, 3]);
        let (rc, seven) = mem.unboxed(a);
        assert_eq!(seven, 7);
        assert_eq!(
            Rc::strong_count(&tracker),
            2,
            "the value moved out, not dropped"
        );
        drop(rc);
        assert_eq!(mem.unboxed(b), vec![1, 2, 3]);
        assert_eq!(mem.kept(), 2);
        // A zero-sized value never touches the free lists.
        let z = mem.boxed(());
        mem.unboxed(z);
        assert_eq!(mem.kept(), 2);
    }

    #[test]
    fn at_most_the_bound_is_kept_per_layout() {
        let mut mem = OpMemory::default();
        let boxes: Vec<_> = (0..KEEP_PER_LAYOUT + 10).map(|i| mem.boxed(i)).collect();
        for b in boxes {
            mem.unboxed(b);
        }
        assert_eq!(mem.kept(), KEEP_PER_LAYOUT);
    }
}
