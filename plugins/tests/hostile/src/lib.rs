//! A plugin that misbehaves in the way its configuration names, so the host's tests can check
//! that each misbehaviour is contained: `spin` (an endless loop in `handle`), `slow-init` (an
//! endless loop in `init`), `trap`, `memory-bomb`, `recursion`, `huge-result`, `bad-prefix`,
//! `undeclared-table`; `echo-events` writes a count rule on each route it is told about (and
//! removes it with the route) and one on 198.18.255.255/32 when a counter snapshot arrives;
//! `kv-count` counts its `handle` calls in its key-value store (so the count outlives the
//! instance when the store does) and writes a count rule on 198.18.0.N/32 for call N, after
//! checking that a value over its quota is refused; `queries` asks where 10.77.0.9 goes and
//! writes a count rule on each gateway's /32, and one on 198.18.N.0/24 for the N interfaces the
//! dataplane serves; `log-multibyte` logs, in `init` and in `handle`, a 5000-byte line with a
//! 3-byte character across byte 4096 (where the host cuts a log line) and otherwise behaves;
//! `panic` panics in `handle` (its SDK logs the message before the trap); `fill-table` returns
//! 5000 filter rules (over the default `max_rules`); `match-all-drop` drops `0.0.0.0/0`;
//! `kv-rewrite` rewrites one 1000 KiB value 20 times a call; `log-invalid-utf8` hands the host a
//! log message that is not UTF-8; `log-flood` logs 200 lines of 1 MiB a call; `op-flood` returns
//! 10,000 operations a call; `rules:ACTION PREFIX;...` holds those source filter rules (set
//! again at every call); `echo-host:K` writes, for each IPv4 /24 route added, a count rule on
//! its address K (`A.B.C.K/32`, so that plugins with different `K` write entries of their own)
//! and removes it with the route; `slow:MS` spends MS ms of CPU in each `handle` and returns
//! nothing; anything else behaves.

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

use sluice_plugin_sdk::{Action, Direction, Event, Guest, Op, filter, host, rate_limit};

static MODE: AtomicU32 = AtomicU32::new(0);
const MODES: [&str; 19] = [
    "spin",
    "slow-init",
    "trap",
    "memory-bomb",
    "recursion",
    "huge-result",
    "bad-prefix",
    "undeclared-table",
    "echo-events",
    "kv-count",
    "queries",
    "log-multibyte",
    "panic",
    "fill-table",
    "match-all-drop",
    "kv-rewrite",
    "log-invalid-utf8",
    "log-flood",
    "op-flood",
];

/// The rules of `rules:ACTION PREFIX;...`.
static RULES: OnceLock<Vec<Op>> = OnceLock::new();
/// The host address of `echo-host:K`.
static ECHO_HOST: OnceLock<u8> = OnceLock::new();
/// The milliseconds of `slow:MS`.
static SLOW_MS: OnceLock<u64> = OnceLock::new();

/// Address `host` of an IPv4 /24 (`198.18.3.0/24`, 7 -> `198.18.3.7/32`).
fn host_of(prefix: &str, host: u8) -> Option<String> {
    let net = prefix.strip_suffix(".0/24")?;
    Some(format!("{net}.{host}/32"))
}

fn parse_rules(spec: &str) -> Vec<Op> {
    spec.split(';')
        .filter_map(|r| {
            let (action, prefix) = r.trim().split_once(' ')?;
            let action = match action {
                "drop" => Action::Drop,
                "pass" => Action::Pass,
                _ => Action::Count,
            };
            Some(filter(Direction::Src, prefix.trim(), action))
        })
        .collect()
}

/// The message `panic` panics with.
const PANIC: &str = "hostile: panicking as configured";

/// 5000 bytes, a '€' (3 bytes) on bytes 4095 to 4097.
fn multibyte_line() -> String {
    let line = format!("{}€{}", "a".repeat(4095), "b".repeat(5000 - 4098));
    debug_assert!(line.len() == 5000 && !line.is_char_boundary(4096));
    line
}

fn mode() -> &'static str {
    let m = MODE.load(Ordering::Relaxed) as usize;
    if m == 0 { "behave" } else { MODES[m - 1] }
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + recurse(std::hint::black_box(n + 1)) }
}

struct Hostile;

impl Guest for Hostile {
    fn init(config: String) -> Result<Vec<Op>, String> {
        // The API stores a configuration as JSON: a mode given there arrives as a JSON string.
        let config = unquoted(&config);
        if let Some(spec) = config.strip_prefix("rules:") {
            let rules = RULES.get_or_init(|| parse_rules(spec));
            return Ok(rules.clone());
        }
        if let Some(k) = config.strip_prefix("echo-host:") {
            let k = k.trim().parse().map_err(|_| format!("echo-host: {k:?} is not 0 to 255"))?;
            ECHO_HOST.get_or_init(|| k);
            return Ok(Vec::new());
        }
        if let Some(ms) = config.strip_prefix("slow:") {
            let ms = ms.trim().parse().map_err(|_| format!("slow: {ms:?} is not a number"))?;
            SLOW_MS.get_or_init(|| ms);
            return Ok(Vec::new());
        }
        let m = MODES.iter().position(|m| *m == config).map_or(0, |i| i + 1);
        MODE.store(m as u32, Ordering::Relaxed);
        if mode() == "log-multibyte" {
            host::log(host::Level::Info, &multibyte_line());
        }
        if mode() == "slow-init" {
            loop {
                std::hint::black_box(());
            }
        }
        // One rule of its own, to see what its failure policy does with it.
        Ok(vec![filter(Direction::Src, "203.0.113.0/24", Action::Drop)])
    }

    fn handle(events: Vec<Event>) -> Result<Vec<Op>, String> {
        if let Some(rules) = RULES.get() {
            return Ok(rules.clone());
        }
        if let Some(k) = ECHO_HOST.get() {
            return Ok(events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Route(r) => {
                        let host = host_of(&r.prefix, *k)?;
                        Some(if r.added {
                            filter(Direction::Dst, &host, Action::Count)
                        } else {
                            Op::RemoveFilter((Direction::Dst, host))
                        })
                    }
                    _ => None,
                })
                .collect());
        }
        if let Some(ms) = SLOW_MS.get() {
            let until = host::now_ms() + ms;
            while host::now_ms() < until {
                std::hint::black_box(());
            }
            return Ok(Vec::new());
        }
        match mode() {
            "fill-table" => Ok((0..5000u32)
                .map(|i| {
                    let prefix = format!("198.19.{}.{}/32", i >> 8, i & 255);
                    filter(Direction::Src, &prefix, Action::Count)
                })
                .collect()),
            "match-all-drop" => Ok(vec![filter(Direction::Src, "0.0.0.0/0", Action::Drop)]),
            "kv-rewrite" => {
                let round = host::kv_get("round").map_or(0, |v| v.first().copied().unwrap_or(0));
                for i in 0..20u8 {
                    host::kv_set("v", &vec![round.wrapping_add(i); 1000 << 10])?;
                }
                host::kv_set("round", &[round.wrapping_add(1)])?;
                Ok(Vec::new())
            }
            "log-invalid-utf8" => {
                // SAFETY: deliberately not UTF-8: the host must refuse it at the boundary, not
                // take it for a string.
                let bad = unsafe { String::from_utf8_unchecked(vec![b'a', 0xff, 0xfe, 0xc3]) };
                host::log(host::Level::Warn, &bad);
                Ok(Vec::new())
            }
            "log-flood" => {
                let line = "x".repeat(1 << 20);
                for _ in 0..200 {
                    host::log(host::Level::Info, &line);
                }
                Ok(Vec::new())
            }
            "op-flood" => Ok((0..5000)
                .flat_map(|_| {
                    [
                        filter(Direction::Dst, "198.18.9.9/32", Action::Count),
                        Op::RemoveFilter((Direction::Dst, "198.18.9.9/32".into())),
                    ]
                })
                .collect()),
            "echo-events" => Ok(events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Route(r) if r.added => {
                        Some(filter(Direction::Dst, &r.prefix, Action::Count))
                    }
                    Event::Route(r) => Some(Op::RemoveFilter((Direction::Dst, r.prefix))),
                    Event::Counters(c) if !c.is_empty() => {
                        Some(filter(Direction::Src, "198.18.255.255/32", Action::Count))
                    }
                    _ => None,
                })
                .collect()),
            "kv-count" => {
                let calls = host::kv_get("calls")
                    .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                    .map_or(0, u32::from_le_bytes)
                    + 1;
                host::kv_set("calls", &calls.to_le_bytes())?;
                if host::kv_set("big", &[0; 64 << 10]).is_ok() {
                    return Err("a value over the quota was taken".into());
                }
                Ok(vec![filter(Direction::Src, &format!("198.18.0.{calls}/32"), Action::Count)])
            }
            "queries" => {
                let mut ops: Vec<Op> = host::lookup_route("10.77.0.9")
                    .filter(|r| r.action == "forward")
                    .map(|r| r.next_hops)
                    .unwrap_or_default()
                    .iter()
                    .map(|gw| filter(Direction::Src, &format!("{gw}/32"), Action::Count))
                    .collect();
                let n = host::interfaces().len();
                ops.push(filter(Direction::Src, &format!("198.18.{n}.0/24"), Action::Count));
                Ok(ops)
            }
            "log-multibyte" => {
                host::log(host::Level::Info, &multibyte_line());
                Ok(vec![filter(Direction::Src, "198.51.100.0/24", Action::Drop)])
            }
            "panic" => panic!("{PANIC}"),
            "spin" => loop {
                std::hint::black_box(());
            },
            "trap" => std::process::abort(),
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => Ok(vec![filter(
                Direction::Src,
                &format!("192.0.2.{}/32", recurse(1) % 256),
                Action::Drop,
            )]),
            "huge-result" => Ok((0..1_000_000u32)
                .map(|i| {
                    filter(
                        Direction::Dst,
                        &format!("10.{}.{}.0/24", i >> 8 & 255, i & 255),
                        Action::Count,
                    )
                })
                .collect()),
            "bad-prefix" => Ok(vec![filter(Direction::Src, "192.0.2.1/24", Action::Drop)]),
            "undeclared-table" => Ok(vec![rate_limit("192.0.2.0/24", 10, 10)]),
            _ => Ok(vec![filter(Direction::Src, "198.51.100.0/24", Action::Drop)]),
        }
    }
}

sluice_plugin_sdk::export!(Hostile);

/// `"text"` (a configuration given to the API as a JSON string) as `text`; anything else as it is.
fn unquoted(config: &str) -> String {
    let t = config.trim();
    match t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains(['"', '\\']) => inner.to_owned(),
        _ => config.to_owned(),
    }
}
