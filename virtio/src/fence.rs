//! Fences: one timeline per (context, ring), plus the global one; a fence that completes
//! releases every earlier fence on its timeline (virtio spec 5.7.6.7, `FLAG_INFO_RING_IDX`).
//!
//! The device holds a fenced command's descriptor back (its response already written) until
//! its context signals the fence, possibly from another thread through a [`FenceSignaler`];
//! the cross-domain `POLL` keeps its fence pending until the host has a message for the guest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// A fence timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeline {
    /// Fences without `FLAG_INFO_RING_IDX`: completed when the command is processed.
    Global,
    /// One ring of one context.
    Ring {
        /// Context id.
        ctx: u32,
        /// Ring index, 0..64.
        ring: u8,
    },
}

/// A completed command whose used-ring entry is still owed to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldDescriptor {
    /// Head index of the descriptor chain.
    pub head: u16,
    /// Bytes written into it.
    pub len: u32,
}

/// Pending fences and the last completed id per timeline.
#[derive(Debug, Default)]
pub struct FenceTable {
    pending: HashMap<Timeline, Vec<(u64, HeldDescriptor)>>,
    completed: HashMap<Timeline, u64>,
}

impl FenceTable {
    /// Holds `desc` until `fence_id` completes on `timeline`. Returns it straight back if the
    /// fence already completed (a context may signal before the device records the fence).
    pub fn hold(
        &mut self,
        timeline: Timeline,
        fence_id: u64,
        desc: HeldDescriptor,
    ) -> Option<HeldDescriptor> {
        if self
            .completed
            .get(&timeline)
            .is_some_and(|&c| c >= fence_id)
        {
            return Some(desc);
        }
        self.pending
            .entry(timeline)
            .or_default()
            .push((fence_id, desc));
        None
    }

    /// Completes `fence_id` on `timeline`: returns every held descriptor whose fence id is at
    /// most `fence_id`, oldest first.
    pub fn complete(&mut self, timeline: Timeline, fence_id: u64) -> Vec<HeldDescriptor> {
        let last = self.completed.entry(timeline).or_insert(0);
        *last = (*last).max(fence_id);
        let Some(list) = self.pending.get_mut(&timeline) else {
            return Vec::new();
        };
        let mut released = Vec::new();
        list.retain(|&(id, d)| {
            if id <= fence_id {
                released.push((id, d));
                false
            } else {
                true
            }
        });
        if list.is_empty() {
            self.pending.remove(&timeline);
        }
        released.sort_by_key(|&(id, _)| id);
        released.into_iter().map(|(_, d)| d).collect()
    }

    /// Releases everything a destroyed context still held, and forgets its timelines.
    pub fn drop_context(&mut self, ctx: u32) -> Vec<HeldDescriptor> {
        let timelines: Vec<_> = self
            .pending
            .keys()
            .chain(self.completed.keys())
            .copied()
            .filter(|t| matches!(t, Timeline::Ring { ctx: c, .. } if *c == ctx))
            .collect();
        let mut out = Vec::new();
        for t in timelines {
            self.completed.remove(&t);
            if let Some(list) = self.pending.remove(&t) {
                out.extend(list.into_iter().map(|(_, d)| d));
            }
        }
        out
    }

    /// Number of held descriptors.
    pub fn pending_count(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
}

/// A fence a context completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedFence {
    /// Context.
    pub ctx: u32,
    /// Ring.
    pub ring: u8,
    /// Fence id.
    pub fence_id: u64,
}

#[derive(Debug)]
struct SignalerInner {
    completed: Mutex<Vec<CompletedFence>>,
    notify: Option<EventFd>,
}

/// How a context reports completed fences, from any thread. Cloneable; wakes the backend's
/// event loop through an eventfd.
#[derive(Debug, Clone)]
pub struct FenceSignaler {
    inner: Arc<SignalerInner>,
}

impl FenceSignaler {
    /// A signaler that wakes `notify` (the backend registers it with its epoll loop).
    pub fn new(notify: Option<EventFd>) -> FenceSignaler {
        FenceSignaler {
            inner: Arc::new(SignalerInner {
                completed: Mutex::new(Vec::new()),
                notify,
            }),
        }
    }

    /// Reports that `fence_id` on `(ctx, ring)` completed.
    pub fn signal(&self, ctx: u32, ring: u8, fence_id: u64) {
        if let Ok(mut list) = self.inner.completed.lock() {
            list.push(CompletedFence {
                ctx,
                ring,
                fence_id,
            });
        }
        if let Some(ev) = &self.inner.notify {
            let _ = ev.write(1);
        }
    }

    /// Takes what was reported so far.
    pub fn take(&self) -> Vec<CompletedFence> {
        if let Some(ev) = &self.inner.notify {
            // Non-blocking eventfd: a read only resets the counter.
            let _ = ev.read();
        }
        self.inner
            .completed
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// The eventfd, if any.
    pub fn eventfd(&self) -> Option<&EventFd> {
        self.inner.notify.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(head: u16) -> HeldDescriptor {
        HeldDescriptor { head, len: 24 }
    }

    const R1: Timeline = Timeline::Ring { ctx: 1, ring: 1 };
    const R0: Timeline = Timeline::Ring { ctx: 1, ring: 0 };

    #[test]
    fn fence_complete_releases_earlier_on_same_timeline_only() {
        let mut t = FenceTable::default();
        assert_eq!(t.hold(R1, 5, d(1)), None);
        assert_eq!(t.hold(R1, 7, d(2)), None);
        assert_eq!(t.hold(R1, 9, d(3)), None);
        assert_eq!(t.hold(R0, 6, d(4)), None);
        assert_eq!(t.complete(R1, 7), vec![d(1), d(2)]);
        assert_eq!(t.pending_count(), 2);
        assert_eq!(t.complete(R0, 6), vec![d(4)]);
        assert_eq!(t.complete(R1, 100), vec![d(3)]);
        assert_eq!(t.pending_count(), 0);
    }

    #[test]
    fn fence_hold_after_completion_is_released_at_once() {
        let mut t = FenceTable::default();
        assert!(t.complete(R1, 10).is_empty());
        assert_eq!(t.hold(R1, 8, d(1)), Some(d(1)));
        assert_eq!(t.hold(R1, 11, d(2)), None);
    }

    #[test]
    fn fence_drop_context_releases_its_descriptors() {
        let mut t = FenceTable::default();
        t.hold(R1, 5, d(1));
        t.hold(Timeline::Ring { ctx: 2, ring: 1 }, 5, d(2));
        assert_eq!(t.drop_context(1), vec![d(1)]);
        assert_eq!(t.pending_count(), 1);
    }

    #[test]
    fn fence_signaler_take_drains_reports() {
        let s = FenceSignaler::new(Some(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        s.clone().signal(1, 1, 3);
        assert_eq!(
            s.take(),
            vec![CompletedFence {
                ctx: 1,
                ring: 1,
                fence_id: 3
            }]
        );
        assert!(s.take().is_empty());
    }
}
