//! The domain.
pub mod compute;
pub mod fib;
pub mod primes;
pub mod random;
pub mod smart;
pub mod stepper;
