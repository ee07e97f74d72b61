//! The built-in fixed address: a database-elected virtual IP and a layer-4 load balancer.

pub mod lb;
