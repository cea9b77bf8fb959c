//! Builds the XDP programs (`dataplane-ebpf`) for bpfel-unknown-none and leaves the objects in
//! `OUT_DIR`, from where `src/lib.rs` embeds the forwarding program. The directory is handed on to
//! dependents' build scripts (`DEP_SLUICE_XDP_OUT_DIR`): the testbed embeds the benchmark
//! programs of the same build, and the product never holds them. The nightly toolchain used for the
//! eBPF build is `SLUICE_EBPF_TOOLCHAIN` (set by the Makefile from scripts/setup.sh), or `nightly`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SLUICE_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("SLUICE_EBPF_TOOLCHAIN").ok();
    let metadata =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sluice-dataplane-ebpf")
        .ok_or_else(|| anyhow!("sluice-dataplane-ebpf is not in the workspace"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("manifest path has no parent"))?;
    let toolchain = match toolchain.as_deref() {
        Some(t) if !t.is_empty() => aya_build::Toolchain::Custom(t),
        _ => aya_build::Toolchain::Nightly,
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        toolchain,
    )?;
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    println!("cargo::metadata=OUT_DIR={out_dir}");
    Ok(())
}
