//! A sliding window of recent time in equal slices, each holding what its
//! owner counts: the newest slice takes what happens now, and a slice that
//! falls out of the window is reset. So "the last 10 seconds" costs a fixed
//! ring, whatever the rate, and forgets smoothly, one slice at a time.
//! /api/smart's extra-attempt budget counts attempts in one, its adaptive
//! hedge delay keeps latency histograms in another.
//!
//! Sans-clock: `now` is an argument.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Window<S> {
    slices: Vec<S>,
    slice_len: Duration,
    /// The newest slice's place in the ring.
    head: usize,
    /// When the newest slice began; `None` before the first `advance`.
    head_start: Option<Instant>,
}

impl<S: Default> Window<S> {
    /// A window `span` long in `slices` equal slices (at least one).
    pub fn new(span: Duration, slices: usize) -> Window<S> {
        let count = slices.max(1);
        Window {
            slices: (0..count).map(|_| S::default()).collect(),
            slice_len: (span / count as u32).max(Duration::from_millis(1)),
            head: 0,
            head_start: None,
        }
    }

    /// Brings the window up to `now`: the slices that fell out of it are
    /// reset, and the newest is the one `now` falls in. True if any slice
    /// was reset.
    pub fn advance(&mut self, now: Instant) -> bool {
        let Some(start) = self.head_start else {
            self.head_start = Some(now);
            return false;
        };
        let steps = self.slices_since_head(now);
        if steps == 0 {
            return false;
        }
        let len = self.slices.len();
        for _ in 0..steps.min(len) {
            self.head = (self.head + 1) % len;
            if let Some(slice) = self.slices.get_mut(self.head) {
                *slice = S::default();
            }
        }
        let moved = self.slice_len * u32::try_from(steps).unwrap_or(u32::MAX);
        self.head_start = Some(start.checked_add(moved).unwrap_or(now));
        true
    }

    /// Whole slices from the newest slice's start to `now` (0 before the
    /// first `advance`).
    fn slices_since_head(&self, now: Instant) -> usize {
        self.head_start.map_or(0, |start| {
            let elapsed = now.saturating_duration_since(start).as_nanos();
            let steps = elapsed / self.slice_len.as_nanos().max(1);
            usize::try_from(steps).unwrap_or(usize::MAX)
        })
    }

    /// The newest slice (call [`Window::advance`] first).
    pub fn newest(&mut self) -> &mut S {
        let head = self.head;
        &mut self.slices[head]
    }

    /// The slices still in the window at `now`, newest first, without
    /// moving it: a reader (the metrics) changes nothing it reads.
    pub fn live(&self, now: Instant) -> impl Iterator<Item = &S> {
        let len = self.slices.len();
        // The newest `len - steps` slices, counting back from the head.
        let kept = len.saturating_sub(self.slices_since_head(now));
        (0..kept).filter_map(move |back| self.slices.get((self.head + len - back) % len))
    }

    /// How long the window is.
    pub fn span(&self) -> Duration {
        self.slice_len * self.slices.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Everything the window holds as of its last `advance`.
    fn total(w: &Window<u32>) -> u32 {
        w.slices.iter().sum()
    }

    #[test]
    fn counts_are_forgotten_one_slice_at_a_time() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(ms(1000), 4);
        assert_eq!(w.span(), ms(1000));
        for i in 0..4 {
            w.advance(t0 + ms(250 * i));
            *w.newest() += 10;
        }
        assert_eq!(total(&w), 40);
        assert!(w.advance(t0 + ms(1000)), "the oldest slice fell out");
        assert_eq!(total(&w), 30);
        assert!(!w.advance(t0 + ms(1100)), "still in the same slice");
        *w.newest() += 1;
        w.advance(t0 + ms(1500));
        assert_eq!(total(&w), 11, "two more slices fell out");
        w.advance(t0 + ms(60_000));
        assert_eq!(total(&w), 0, "a long pause forgets everything");
        *w.newest() += 1;
        assert_eq!(total(&w), 1);
    }

    #[test]
    fn a_reader_sees_what_is_still_in_the_window_without_moving_it() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(ms(1000), 4);
        for i in 0..4 {
            w.advance(t0 + ms(250 * i));
            *w.newest() += 1 << i;
        }
        let live = |w: &Window<u32>, at: u64| w.live(t0 + ms(at)).sum::<u32>();
        assert_eq!(live(&w, 750), 15);
        assert_eq!(live(&w, 1000), 14, "the first slice is out");
        assert_eq!(live(&w, 1500), 8, "only the newest is left");
        assert_eq!(live(&w, 1750), 0);
        assert_eq!(total(&w), 15, "nothing was reset");
    }

    #[test]
    fn the_clock_going_nowhere_changes_nothing() {
        let t0 = Instant::now();
        let mut w: Window<u32> = Window::new(ms(100), 10);
        w.advance(t0);
        *w.newest() = 5;
        assert!(!w.advance(t0));
        let earlier = t0.checked_sub(ms(50)).unwrap_or(t0);
        assert!(!w.advance(earlier), "an earlier instant is not a step");
        assert_eq!(total(&w), 5);
    }
}
