// Command postern is Postern's one binary: the sidecar (`postern serve`) and the administrators'
// tools (`postern project ...`, `postern postfix-config`). The commands live in sidecar/cli; this
// file only wires them to the process: standard streams, the terminal, signals and the exit code.
// The version is stamped into package buildinfo at build time (make build, make dist).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/postern/postern/sidecar/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	app := &cli.App{
		Stdin:        os.Stdin,
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
		ReadPassword: cli.TerminalPassword(os.Stdin, os.Stderr),
		NotifyReload: func(c chan<- os.Signal) { signal.Notify(c, syscall.SIGHUP) },
	}
	code := app.Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
