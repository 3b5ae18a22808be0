//! The admin API and web console against a running worker, the real RabbitMQ and both
//! databases, with the in-process simulator as the provider: tokens and roles on every
//! route ([`api`]), escaping and the refusal of cross-site posts ([`pages`]), and the
//! console driven in headless Chromium, with a screenshot of each page ([`browser`]); the
//! binary's log of who changed what, without a token in it ([`audit`]).

mod api;
mod audit;
mod browser;
mod pages;
mod support;
#[path = "../worker/support/teardown.rs"]
mod teardown;
