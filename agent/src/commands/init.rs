//! `lifeboat-agent init`.

use lifeboat_common::exit;

use super::{CmdResult, Failure};
use crate::cli::InitArgs;
use crate::enroll;

pub fn run(args: &InitArgs) -> CmdResult {
    let out = enroll::init(&args.name, &args.dir, args.controller.as_deref())
        .map_err(|e| Failure::new(&e, None))?;
    let dir = args.dir.display();
    println!(
        "Created {} (private key, mode 0600; it never leaves this VM)",
        out.key.display()
    );
    println!(
        "Created {} (certificate signing request)",
        out.csr.display()
    );
    println!(
        "Created {} (edit the sources and the controller address)",
        out.config.display()
    );
    println!();
    println!("Next steps:");
    println!(
        "  1. Copy {} to the controller host and run:",
        out.csr.display()
    );
    println!(
        "       lifeboatctl agent add {} --csr {dir}/agent.csr --out {dir}",
        args.name
    );
    println!("     then copy agent.pem and ca.pem back into {dir}.");
    println!("     (Or skip the CSR: `lifeboat-agent enroll --token-file FILE --dir {dir}` with a");
    println!("     token from `lifeboatctl token create`.)");
    println!("  2. Copy the fleet master key to {dir}/master.key (chmod 600).");
    println!(
        "  3. Test it: lifeboat-agent --config {} backup",
        out.config.display()
    );
    Ok(exit::SUCCESS)
}
