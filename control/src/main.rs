fn main() { println!("{}", sluice::EBPF_OBJECT.len()); }
