//! What the plugin key-value store replaced does under a rewrite loop (ADR 0046): a sled tree
//! with one ~1000 KiB value rewritten 1,000 times, its size on disk printed every 200 rewrites,
//! after the tree is dropped and after a reopen. A measurement for the record, not a test: it
//! writes about 1 GB. Run: `cargo run --release -p sluice-store --example sled_rewrite [DIR]`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

fn size(p: &Path) -> u64 {
    fs::read_dir(p).map_or(0, |d| {
        d.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(
        || std::env::temp_dir().join(format!("sluice-sled-rewrite-{}", std::process::id())),
        PathBuf::from,
    );
    let db = sled::Config::new().path(&dir).open()?;
    let tree = db.open_tree("kv/loop")?;
    let started = Instant::now();
    for i in 0..1000u32 {
        tree.insert("v", vec![i as u8; 1000 << 10])?;
        if i % 200 == 199 {
            db.flush()?;
            println!(
                "sled: {} rewrites, {} MiB on disk, {:?}",
                i + 1,
                size(&dir) >> 20,
                started.elapsed()
            );
        }
    }
    db.drop_tree("kv/loop")?;
    db.flush()?;
    println!("sled: tree dropped, {} MiB on disk", size(&dir) >> 20);
    drop((tree, db));
    let db = sled::Config::new().path(&dir).open()?;
    db.flush()?;
    println!("sled: reopened, {} MiB on disk", size(&dir) >> 20);
    drop(db);
    fs::remove_dir_all(&dir)?;
    Ok(())
}
