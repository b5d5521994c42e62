//! `ch-standin`: a stand-in for `cloud-hypervisor` that reproduces the
//! recorded behaviour of the real one (see `integration::standin`).

fn main() {
    std::process::exit(integration::standin::run(std::env::args_os()));
}
