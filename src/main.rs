use std::process::ExitCode;

fn main() -> ExitCode {
    match tokengate::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
