pub fn run(name: &str) -> anyhow::Result<()> {
    anyhow::bail!("unknown benchmark {name}")
}
