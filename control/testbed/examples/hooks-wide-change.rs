//! The hook tables' writer's cost of one change covering many rules: plugins hold `RULES`
//! filter rules inside 10.0.0.0/8 (`/24`s by default, or `/32`s), one plugin adds a `drop` on
//! 10.0.0.0/8 and removes it again, and the same drop is undone after its last map write
//! failed. Each change rewrites the verdict of every entry inside the /8. Then the plugin that
//! holds them all is removed, and that undone too after its last write failed.
//!
//! Printed: the time of each change (median and slowest of the rounds), the map operations it
//! made (entries set or deleted, counters zeroed, counters read), and the heap the writer holds
//! for the rules (the maps here only count operations: no kernel, no root; the kernel's LPM
//! tries are not in the figure).
//!
//! ```text
//! cargo run --release -p sluice-testbed --example hooks-wide-change [-- RULES [LEN [ROUNDS]]]
//! ```

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::{IpAddr, Ipv4Addr},
    rc::Rc,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net};
use sluice_common::{
    Counter,
    hooks::{FilterRule, HookConfig, RateRule, SteerRule},
};
use sluice_core::hooks::{Action, Direction, HookError, HookMaps, HookOp, HookTables};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only counts are kept beside it.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait; this one only counts")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Map operations made so far, and the write that is to fail.
#[derive(Default)]
struct Ops {
    writes: Cell<usize>,
    resets: Cell<usize>,
    reads: Cell<usize>,
    fail_at: Cell<Option<usize>>,
}

impl Ops {
    fn snapshot(&self) -> [usize; 3] {
        [self.writes.get(), self.resets.get(), self.reads.get()]
    }
}

/// Hook maps that hold nothing and count what is asked of them.
struct CountingMaps(Rc<Ops>);

impl CountingMaps {
    fn write(&self) -> Result<(), HookError> {
        let n = self.0.writes.get() + 1;
        self.0.writes.set(n);
        if self.0.fail_at.get() == Some(n) {
            return Err(HookError::Map { map: "test", source: "injected failure".into() });
        }
        Ok(())
    }
}

impl HookMaps for CountingMaps {
    fn set_filter(&mut self, _: Direction, _: IpNet, _: FilterRule) -> Result<(), HookError> {
        self.write()
    }
    fn del_filter(&mut self, _: Direction, _: IpNet) -> Result<(), HookError> {
        self.write()
    }
    fn set_rate(&mut self, _: IpNet, _: RateRule) -> Result<(), HookError> {
        self.write()
    }
    fn del_rate(&mut self, _: IpNet) -> Result<(), HookError> {
        self.write()
    }
    fn set_steer(&mut self, _: IpNet, _: &SteerRule) -> Result<(), HookError> {
        self.write()
    }
    fn del_steer(&mut self, _: IpNet) -> Result<(), HookError> {
        self.write()
    }
    fn nexthop_of(&self, _: IpAddr) -> Option<u32> {
        None
    }
    fn set_config(&mut self, _: HookConfig) -> Result<(), HookError> {
        Ok(())
    }
    fn counter(&self, _: u32) -> Result<Counter, HookError> {
        self.0.reads.set(self.0.reads.get() + 1);
        Ok(Counter::default())
    }
    fn reset_counter(&mut self, _: u32) -> Result<(), HookError> {
        self.0.resets.set(self.0.resets.get() + 1);
        Ok(())
    }
}

/// One kind of change, timed over the rounds.
#[derive(Default)]
struct Timed {
    times: Vec<Duration>,
    ops: [usize; 3],
}

impl Timed {
    fn run(&mut self, ops: &Ops, f: impl FnOnce()) {
        let before = ops.snapshot();
        let started = Instant::now();
        f();
        self.times.push(started.elapsed());
        let after = ops.snapshot();
        self.ops = [after[0] - before[0], after[1] - before[1], after[2] - before[2]];
    }

    fn print(&mut self, what: &str) {
        self.times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{what:<46} median {:>8.1} ms, slowest {:>8.1} ms; {} entries set or deleted, {} \
             counters zeroed, {} read",
            ms(self.times[self.times.len() / 2]),
            ms(self.times[self.times.len() - 1]),
            self.ops[0],
            self.ops[1],
            self.ops[2]
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rules: u32 = args.next().map_or(65_535, |a| a.parse().expect("RULES"));
    let len: u8 = args.next().map_or(24, |a| a.parse().expect("LEN: 24 or 32"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    assert!(matches!(len, 24 | 32), "LEN: 24 or 32");
    assert!(rules < 1 << (len - 8), "RULES: fewer than the /{len}s of a /8");
    let shift = 32 - u32::from(len);
    let all: Vec<HookOp> = (0..rules)
        .map(|i| {
            let addr = Ipv4Addr::from(0x0a00_0000 | (i << shift));
            let prefix = IpNet::V4(Ipv4Net::new(addr, len).expect("a prefix length"));
            HookOp::SetFilter { direction: Direction::Src, prefix, action: Action::Count }
        })
        .collect();
    let fourth: Vec<HookOp> = all.iter().step_by(4).cloned().collect();
    let slash8: IpNet = "10.0.0.0/8".parse().expect("a prefix");
    let add =
        [HookOp::SetFilter { direction: Direction::Src, prefix: slash8, action: Action::Drop }];
    let remove = [HookOp::RemoveFilter { direction: Direction::Src, prefix: slash8 }];

    let ops = Rc::new(Ops::default());
    let heap_before = LIVE.load(Ordering::Relaxed);
    let mut tables = HookTables::new(CountingMaps(ops.clone()));
    let mut load = Timed::default();
    load.run(&ops, || {
        tables.replace_owner("a", &all).expect("a's rules");
        tables.replace_owner("b", &fourth).expect("b's rules");
    });
    let held = LIVE.load(Ordering::Relaxed) - heap_before;
    println!(
        "{rules} /{len} count rules inside 10.0.0.0/8: plugin a holds all, b every fourth again \
         ({}); the writer holds {:.1} MiB for them ({:.0} bytes per rule held)",
        fourth.len(),
        held as f64 / 1_048_576.0,
        held as f64 / (all.len() + fourth.len()) as f64
    );
    load.print("loaded (a, then b)");

    let (mut again, mut added, mut removed, mut undone, mut unremoved): (
        Timed,
        Timed,
        Timed,
        Timed,
        Timed,
    ) = Default::default();
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let peak_from = LIVE.load(Ordering::Relaxed);
    for _ in 0..rounds {
        again.run(&ops, || tables.replace_owner("a", &all).expect("a's rules again"));
        added.run(&ops, || tables.apply("guard", &add).expect("the /8 drop"));
        removed.run(&ops, || tables.apply("guard", &remove).expect("the /8 drop removed"));
        // Every entry inside the /8 is written, then the last write fails.
        ops.fail_at.set(Some(ops.writes.get() + rules as usize + 1));
        undone.run(&ops, || {
            tables.apply("guard", &add).expect_err("the injected failure");
        });
        // The rules a holds alone are deleted, then the last deletion fails.
        ops.fail_at.set(Some(ops.writes.get() + all.len() - fourth.len()));
        unremoved.run(&ops, || {
            tables.remove_owner("a").expect_err("the injected failure");
        });
        ops.fail_at.set(None);
    }
    again.print("a's same rules again (replace_owner)");
    added.print("drop on 10.0.0.0/8 added");
    removed.print("drop on 10.0.0.0/8 removed");
    undone.print("drop on 10.0.0.0/8, last write failed, undone");
    unremoved.print("a's rules removed, last write failed, undone");
    println!(
        "heap at the peak of a change: {:.1} MiB over what the writer holds",
        (PEAK.load(Ordering::Relaxed) - peak_from) as f64 / 1_048_576.0
    );
    let started = Instant::now();
    let listed = tables.rules(None).expect("the rules").len();
    println!("rules() listed {listed} rules in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
}
