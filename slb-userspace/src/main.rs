fn main() -> anyhow::Result<()> {
    println!("{} bytes of BPF", slb::EBPF_OBJECT.len());
    Ok(())
}
