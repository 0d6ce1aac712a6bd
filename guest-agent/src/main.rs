//! `guest-agent`: see the library documentation and [`guest_agent::args`] for the commands.

use guest_agent::AgentError;

#[cfg(target_os = "linux")]
mod run;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd_name = args.first().cloned().unwrap_or_default();
    let result = guest_agent::args::parse(&args).and_then(|cmd| {
        #[cfg(target_os = "linux")]
        {
            run::run(cmd)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = cmd;
            Err(AgentError::Usage("the agent runs on Linux only".into()))
        }
    });
    if let Err(e) = result {
        let mut r = guest_agent::report::Report::new("error")
            .field("cmd", &cmd_name)
            .field("msg", e.to_string());
        if let Some(errno) = e.errno() {
            r = r.field("errno", errno);
        }
        println!("{}", r.to_line());
        eprintln!("guest-agent: {e}");
        std::process::exit(if matches!(e, AgentError::Usage(_)) {
            2
        } else {
            1
        });
    }
}
