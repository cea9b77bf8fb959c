//! The management API against a hostile client: logins, uploads, audit noise and credentials.
//! A daemon serves its API in a namespace of its own; clients connect from many loopback
//! sources (any 127.0.0.0/8 address is the namespace's own). Each test prints what it measured.
//! Needs root, like the other namespace tests.

use std::{
    io::{Read as _, Write as _},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use sluice_testbed::{
    api_lab::{ADMIN, ApiLab, Session, head, in_namespace, read_answer},
    privileged,
};

fn lab(prefix: &str) -> Option<ApiLab> {
    privileged().then(|| ApiLab::start(prefix, &[]).expect("a daemon serving its API"))
}

/// Loopback source `n`, as the raw client's `from`.
#[expect(clippy::unnecessary_wraps, reason = "the raw client's `from` is optional")]
fn source(n: u32) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, (n >> 8) as u8, n as u8]))
}

/// What a flood of logins did: answers by status, the daemon's memory, `/health`'s latency.
#[derive(Debug, Default)]
struct Flood {
    statuses: std::collections::BTreeMap<u16, u32>,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    anon_before_mib: f64,
    anon_peak_mib: f64,
    health_max_ms: f64,
    health_answers: u64,
}

/// `logins` wrong logins for the administrator at once, from `sources` sources, while another
/// source asks `/health` every 50 ms and the daemon's memory is sampled.
fn flood(lab: &ApiLab, logins: u32, sources: u32) -> Flood {
    let raw = lab.raw().expect("a client");
    let ns = lab.ns().to_owned();
    let mut f = Flood {
        rss_before_mib: lab.rss_kib() as f64 / 1024.0,
        anon_before_mib: lab.settled_anon_kib() as f64 / 1024.0,
        ..Flood::default()
    };
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(lab.rss_kib());
    let anon_peak = AtomicU64::new(lab.anon_kib());
    let (health_max_us, health_answers) = (AtomicU64::new(0), AtomicU64::new(0));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(lab.rss_kib(), Ordering::Relaxed);
                anon_peak.fetch_max(lab.anon_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        s.spawn(|| {
            in_namespace(&ns, || {
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let a = raw.request(source(250), "GET", "/api/v1/health", &[], b"")?;
                    anyhow::ensure!(a.status == 200, "/health: {}", a.status);
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    health_max_us.fetch_max(us, Ordering::Relaxed);
                    health_answers.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            })
            .expect("/health answers throughout");
        });
        let start = Arc::new(std::sync::Barrier::new(logins as usize));
        let attackers: Vec<_> = (0..logins)
            .map(|i| {
                let (raw, ns, start) = (raw.clone(), ns.clone(), Arc::clone(&start));
                s.spawn(move || {
                    in_namespace(&ns, || {
                        let from = source(10 + i % sources);
                        // A connection beyond the per-source cap is refused (status 0 here);
                        // every attacker waits at the start line all the same.
                        let tls = raw.connect(from);
                        start.wait();
                        let mut tls = tls?;
                        let body = json!({"username": ADMIN.0, "password": format!("guess {i}")})
                            .to_string();
                        let head = head(
                            "POST",
                            "/api/v1/login",
                            &[("Content-Type", "application/json")],
                            body.len(),
                        );
                        tls.write_all(&head)?;
                        tls.write_all(body.as_bytes())?;
                        Ok(read_answer(&mut tls)?.status)
                    })
                    .unwrap_or(0)
                })
            })
            .collect();
        let statuses = attackers.into_iter().map(|h| h.join().expect("an attacker")).collect();
        // Memory freed late counts too.
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        statuses
    });
    for s in statuses {
        *f.statuses.entry(s).or_default() += 1;
    }
    f.rss_peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    f.anon_peak_mib = anon_peak.load(Ordering::Relaxed) as f64 / 1024.0;
    f.health_max_ms = health_max_us.load(Ordering::Relaxed) as f64 / 1000.0;
    f.health_answers = health_answers.load(Ordering::Relaxed);
    f
}

#[test]
fn two_hundred_concurrent_wrong_logins_cost_little_memory_and_health_answers_throughout() {
    let Some(lab) = lab("hal") else { return };
    in_namespace(lab.ns(), || lab.setup_admin().map(drop)).expect("the administrator");
    for sources in [1, 40] {
        let f = flood(&lab, 200, sources);
        let growth = f.anon_peak_mib - f.anon_before_mib;
        println!(
            "200 concurrent wrong logins from {sources} source(s): answers (0: connection refused at the per-source cap) {:?}; daemon memory of its own (RssAnon) {:.0} -> peak {:.0} MiB (+{growth:.0}), RSS with the maps' pages {:.0} -> {:.0} MiB; /health answered {} times, slowest {:.0} ms",
            f.statuses,
            f.anon_before_mib,
            f.anon_peak_mib,
            f.rss_before_mib,
            f.rss_peak_mib,
            f.health_answers,
            f.health_max_ms
        );
        assert!(growth <= 64.0, "the daemon's own memory grew {growth:.0} MiB");
        assert!(f.health_max_ms <= 1000.0, "/health took {:.0} ms", f.health_max_ms);
        assert!(f.health_answers > 0);
        // Every login is answered 401, 429 or 503, or its connection refused at the per-source
        // cap (0 here).
        let answered: u32 = [0, 401, 429, 503].iter().filter_map(|s| f.statuses.get(s)).sum();
        assert_eq!(answered, 200, "{:?}", f.statuses);
    }
    // The owner, from a source of its own, still gets in.
    in_namespace(lab.ns(), || lab.raw()?.login(source(251), ADMIN.0, ADMIN.1).map(drop))
        .expect("the administrator logs in after the floods");
}

#[test]
fn the_owner_logs_in_from_elsewhere_after_ten_failures_from_one_source() {
    let Some(lab) = lab("hao") else { return };
    in_namespace(lab.ns(), || {
        lab.setup_admin()?;
        let raw = lab.raw()?;
        let wrong = json!({"username": ADMIN.0, "password": "not the password"});
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(raw.json(source(2), "POST", "/api/v1/login", &[], Some(&wrong))?.status);
        }
        let t = Instant::now();
        raw.login(source(3), ADMIN.0, ADMIN.1).context("the owner from another source")?;
        println!(
            "10 wrong logins from 127.0.0.2: {statuses:?}; the right password from 127.0.0.3: 200 in {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        anyhow::ensure!(statuses.contains(&429), "the pair is throttled: {statuses:?}");
        let right = json!({"username": ADMIN.0, "password": ADMIN.1});
        let a = raw.json(source(2), "POST", "/api/v1/login", &[], Some(&right))?;
        anyhow::ensure!(a.status == 429, "the throttled pair waits: {}", a.status);
        anyhow::ensure!(a.header("retry-after").is_some(), "with Retry-After");
        Ok(())
    })
    .unwrap();
}

#[test]
fn an_anonymous_upload_is_refused_within_a_second_of_its_headers() {
    let Some(lab) = lab("hau") else { return };
    let before = lab.settled_anon_kib();
    in_namespace(lab.ns(), || {
        let raw = lab.raw()?;
        let uploads: Vec<anyhow::Result<(u16, f64)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let (raw, ns) = (raw.clone(), lab.ns().to_owned());
                    s.spawn(move || {
                        in_namespace(&ns, || {
                            let mut tls = raw.connect(source(20 + i))?;
                            let head = head(
                                "POST",
                                "/api/v1/plugins",
                                &[("Content-Type", "application/json")],
                                30 << 20,
                            );
                            tls.write_all(&head)?;
                            // A slow sender: a little of the body, then nothing more.
                            tls.write_all(&[b' '; 4096])?;
                            tls.flush()?;
                            let t = Instant::now();
                            let a = read_answer(&mut tls)?;
                            Ok((a.status, t.elapsed().as_secs_f64() * 1000.0))
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("an uploader")).collect()
        });
        let answers: Vec<(u16, f64)> = uploads.into_iter().collect::<anyhow::Result<_>>()?;
        let slowest = answers.iter().map(|a| a.1).fold(0.0, f64::max);
        let growth = (lab.anon_kib() as f64 - before as f64) / 1024.0;
        println!(
            "16 anonymous 30 MiB uploads sent slowly: statuses {:?}; slowest answer {slowest:.0} ms after the headers; daemon memory of its own (RssAnon) +{growth:.0} MiB",
            answers.iter().map(|a| a.0).collect::<Vec<_>>()
        );
        anyhow::ensure!(answers.iter().all(|a| a.0 == 401), "401 for each: {answers:?}");
        anyhow::ensure!(slowest < 1000.0, "within a second: {slowest:.0} ms");
        anyhow::ensure!(growth < 32.0, "no body held: +{growth:.0} MiB");
        Ok(())
    })
    .unwrap();
}

#[test]
fn anonymous_noise_on_public_routes_leaves_the_administrators_login_in_the_audit() {
    let Some(lab) = lab("han") else { return };
    in_namespace(lab.ns(), || {
        let admin = lab.setup_admin()?;
        let raw = lab.raw()?;
        let audit = |log: &str| -> anyhow::Result<Vec<Value>> {
            let path = format!("/api/v1/audit?limit=1000000&log={log}");
            let a = raw.request(None, "GET", &path, &[("Cookie", admin.cookie.as_str())], b"")?;
            Ok(a.json().as_array().cloned().unwrap_or_default())
        };
        let before = audit("changes")?.len();
        let t = Instant::now();
        let sent: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u32)
                .map(|w| {
                    let ns = lab.ns().to_owned();
                    let agent = lab.agent().expect("an agent");
                    s.spawn(move || {
                        in_namespace(&ns, || {
                            let url = |p: &str| format!("https://127.0.0.1:8443/api/v1{p}");
                            let mut n = 0u64;
                            for i in 0..1250u32 {
                                let body = if i % 2 == 0 {
                                    json!({"token": "0".repeat(64), "username": "eve", "password": "x".repeat(12)})
                                } else {
                                    json!({"username": format!("u{w}-{i}"), "password": "guess"})
                                };
                                let path = if i % 2 == 0 { "/setup" } else { "/login" };
                                agent
                                    .post(url(path))
                                    .header("Content-Type", "application/json")
                                    .send(body.to_string())?;
                                n += 1;
                            }
                            Ok(n)
                        })
                        .expect("the noise")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("a sender")).sum()
        });
        let secs = t.elapsed().as_secs_f64();
        let changes = audit("changes")?;
        let kept = changes
            .iter()
            .any(|e| e["who"] == ADMIN.0 && e["action"] == "POST /api/v1/login" && e["outcome"] == "ok");
        let failures = audit("failures")?.len();
        let refused =
            raw.request(None, "GET", "/api/v1/audit/refused", &[("Cookie", admin.cookie.as_str())], b"")?;
        let counted: u64 =
            refused.json().as_array().into_iter().flatten().filter_map(|r| r["count"].as_u64()).sum();
        println!(
            "{sent} anonymous requests to /setup and /login in {secs:.1} s: the audit of changes {before} -> {} entries (the administrator's login kept: {kept}); {failures} failed logins logged; {counted} refusals counted",
            changes.len()
        );
        anyhow::ensure!(kept, "the administrator's login is in the audit");
        anyhow::ensure!(changes.len() == before, "noise wrote no change: {before} -> {}", changes.len());
        anyhow::ensure!(counted >= sent / 2, "the refusals are counted: {counted} of {sent}");
        Ok(())
    })
    .unwrap();
}

/// Opens the counters' stream with `headers`; returns a handle that yields how long after
/// `ended_at` was set the stream ended (or an error past `limit`).
fn watch_stream(
    lab: &ApiLab,
    headers: Vec<(String, String)>,
) -> std::thread::JoinHandle<anyhow::Result<Instant>> {
    let (raw, ns) = (lab.raw().expect("a client"), lab.ns().to_owned());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        in_namespace(&ns, || {
            let mut raw = raw;
            raw.timeout = Duration::from_secs(10);
            let mut tls = raw.connect(None)?;
            let hs: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            tls.write_all(&head("GET", "/api/v1/counters/stream", &hs, 0))?;
            let mut buf = [0u8; 4096];
            let n = tls.read(&mut buf)?;
            anyhow::ensure!(buf[..n].starts_with(b"HTTP/1.1 200"), "the stream opens");
            ready_tx.send(()).ok();
            loop {
                match tls.read(&mut buf) {
                    Ok(0) => return Ok(Instant::now()),
                    Ok(n) if buf[..n].ends_with(b"0\r\n\r\n") => return Ok(Instant::now()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(Instant::now());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the stream opened");
    h
}

#[test]
fn credentials_end_with_their_holder_and_the_last_administrator_stays() {
    let Some(lab) = lab("hac") else { return };
    let ns = lab.ns().to_owned();
    let (admin, raw) = in_namespace(&ns, || Ok((lab.setup_admin()?, lab.raw()?))).unwrap();
    let call = |method: &str, path: &str, s: &[(&str, &str)], body: Option<&Value>| {
        in_namespace(&ns, || raw.json(None, method, path, s, body)).expect("an answer")
    };
    let bearer = |t: &str| format!("Bearer {t}");
    // The last administrator can be neither demoted nor deleted.
    let a =
        call("PATCH", "/api/v1/users/admin", &admin.headers(), Some(&json!({"role": "viewer"})));
    assert_eq!(a.status, 409, "{}", a.text());
    // A read token makes no token; an admin token makes weaker ones that end with it.
    let mint = |s: &[(&str, &str)], scope: &str| {
        call("POST", "/api/v1/tokens", s, Some(&json!({"name": "t", "scope": scope})))
    };
    let read = mint(&admin.headers(), "read").json()["token"].as_str().unwrap().to_owned();
    let a = mint(&[("Authorization", &bearer(&read))], "read");
    assert_eq!(a.status, 403, "a read token mints nothing: {}", a.text());
    let parent = mint(&admin.headers(), "admin").json();
    let parent_secret = parent["token"].as_str().unwrap().to_owned();
    let child = mint(&[("Authorization", &bearer(&parent_secret))], "read").json();
    let child_secret = child["token"].as_str().unwrap().to_owned();
    let a = mint(&[("Authorization", &bearer(&child_secret))], "admin");
    assert_eq!(a.status, 403, "{}", a.text());
    // The child's stream ends within 2 s of its parent's revocation.
    let stream = watch_stream(&lab, vec![("Authorization".into(), bearer(&child_secret))]);
    let revoked_at = Instant::now();
    let path = format!("/api/v1/tokens/{}", parent["id"].as_str().unwrap());
    assert_eq!(call("DELETE", &path, &admin.headers(), None).status, 200);
    let ended = stream.join().unwrap().expect("the stream ends");
    let token_ms = ended.duration_since(revoked_at).as_secs_f64() * 1000.0;
    let a = call("GET", "/api/v1/me", &[("Authorization", &bearer(&child_secret))], None);
    assert_eq!(a.status, 401, "the child ended with its parent");
    // A user's sessions and their streams end within 2 s of a password change.
    let user = json!({"name": "olga", "password": "another long one", "role": "viewer"});
    assert_eq!(call("POST", "/api/v1/users", &admin.headers(), Some(&user)).status, 201);
    let olga: Session =
        in_namespace(&ns, || raw.login(source(5), "olga", "another long one")).unwrap();
    let stream = watch_stream(&lab, vec![("Cookie".into(), olga.cookie.clone())]);
    let changed_at = Instant::now();
    let new = json!({"password": "a brand new password"});
    assert_eq!(call("PATCH", "/api/v1/users/olga", &admin.headers(), Some(&new)).status, 200);
    let ended = stream.join().unwrap().expect("the stream ends");
    let session_ms = ended.duration_since(changed_at).as_secs_f64() * 1000.0;
    let a = call("GET", "/api/v1/me", &[("Cookie", olga.cookie.as_str())], None);
    assert_eq!(a.status, 401, "the session ended");
    println!(
        "a revoked admin token's child token: stream ended {token_ms:.0} ms after the revocation; a session's stream ended {session_ms:.0} ms after its password changed"
    );
    assert!(token_ms <= 2000.0 && session_ms <= 2000.0);
}
