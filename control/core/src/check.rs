//! Checking lookup tables against the routes they must hold: what `sluice verify` reports.
//!
//! The lookup tables are what the XDP program reads; the routes are what the control plane
//! compiled from the kernel. A check builds, in plain memory, the tables those routes make and
//! compares what both answer, address range by address range, so that any entry the program
//! would read differently (a torn write, a second writer, a damaged adoption) is found, whatever
//! the table's layout. It also reports what is wrong with the live tables' structure: second-level
//! groups or nodes that two entries point to, pointers outside the table, results naming a
//! pointer.

use sluice_common::{Route, RouteAction};

/// Differences and problems kept as examples in a [`Check`]; beyond, only counted.
pub const EXAMPLES: usize = 20;

/// What an entry answers: a route, no route, or nothing valid (a pointer outside the table).
pub(crate) type Answer = Result<Option<Route>, ()>;

/// One place where the tables answer differently from the routes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// The addresses: a prefix (IPv4: the /24 or /32 of the entry) or, for IPv6, the first
    /// address of the range that differs.
    pub at: String,
    /// What the lookup tables answer.
    pub tables: String,
    /// What the routes say.
    pub routes: String,
}

/// The result of checking lookup tables against routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// Entries (IPv6: address ranges) compared.
    pub compared: u64,
    /// How many of them answer differently from the routes.
    pub differences: u64,
    /// The first differences.
    pub examples: Vec<Mismatch>,
    /// How many structural problems the tables have.
    pub problems: u64,
    /// The first of them, in words.
    pub problem_examples: Vec<String>,
}

impl Check {
    /// Whether the tables answer as the routes say and have no structural problem.
    pub fn is_clean(&self) -> bool {
        self.differences == 0 && self.problems == 0
    }

    pub(crate) fn compare(&mut self, at: impl FnOnce() -> String, tables: Answer, routes: Answer) {
        self.compared += 1;
        if tables == routes {
            return;
        }
        self.differences += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(Mismatch {
                at: at(),
                tables: describe(tables),
                routes: describe(routes),
            });
        }
    }

    pub(crate) fn problem(&mut self, what: impl FnOnce() -> String) {
        self.problems += 1;
        if self.problem_examples.len() < EXAMPLES {
            self.problem_examples.push(what());
        }
    }
}

/// An answer in words: `forward 3`, `ecmp 1`, `none`, `invalid`.
pub fn describe(answer: Answer) -> String {
    match answer {
        Err(()) => "invalid (points outside the table)".into(),
        Ok(None) => "none".into(),
        Ok(Some(r)) => match RouteAction::from_u32(r.action) {
            Some(a) => format!("{} {}", a.name(), r.target),
            None => format!("action {} {}", r.action, r.target),
        },
    }
}
