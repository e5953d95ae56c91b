//! One module per subcommand.

pub mod bench;
pub mod bench_io;
pub mod bench_process;
pub mod bench_scale;
pub mod cluster;
pub mod demo;
pub mod master;
pub mod status;
pub mod worker;
