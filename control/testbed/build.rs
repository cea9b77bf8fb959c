//! Hands the benchmark's XDP programs to the crate: `sluice-dataplane`'s build script builds the
//! whole eBPF package once and says where (`DEP_SLUICE_XDP_OUT_DIR`); the product embeds only the
//! forwarding program from there, the testbed the benchmark's.
fn main() {
    let dir = std::env::var("DEP_SLUICE_XDP_OUT_DIR")
        .expect("sluice-dataplane's build script names the eBPF objects' directory");
    println!("cargo::rustc-env=SLUICE_BENCH_XDP={dir}/sluice-bench-xdp");
    println!("cargo::rerun-if-env-changed=DEP_SLUICE_XDP_OUT_DIR");
}
