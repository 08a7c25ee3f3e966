//! The `strategy-executor` binary: the runtime with the built-in strategies registered.

fn main() -> std::process::ExitCode {
    strategy_executor::runtime::main_with(strategy_executor::strategies::builtin_registry())
}
