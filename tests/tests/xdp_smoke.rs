use gateway::{config::FilterMode, xdp::ranges::RangeSet};
use gateway_tests::{filter::*, packet::Frame};

#[test]
fn smoke() {
    let set = RangeSet::new(vec!["192.0.2.0/24".parse().unwrap()], vec![]);
    let mut f = TestFilter::new(
        "smoke",
        &settings(FilterMode::Ports, false, &[443], &[]),
        &set,
    );
    let ok = Frame::tcp(
        "192.0.2.1".parse().unwrap(),
        "203.0.113.1".parse().unwrap(),
        443,
    )
    .build();
    let bad = Frame::tcp(
        "198.51.100.1".parse().unwrap(),
        "203.0.113.1".parse().unwrap(),
        443,
    )
    .build();
    println!("{:?}", f.verdict(&ok));
    println!("{:?}", f.verdict(&bad));
}
