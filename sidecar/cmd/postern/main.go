// Command postern is Postern's one binary: the sidecar (`postern serve`) and the administrators'
// tools (`postern project ...`, `postern postfix-config`). The commands live in sidecar/cli; this
// file only wires them to the process: standard streams, the terminal, signals and the exit code.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/cli"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	app := &cli.App{
		Stdin:        os.Stdin,
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
		ReadPassword: cli.TerminalPassword(os.Stdin, os.Stderr),
		Serve:        sidecar.Serve,
		NotifyReload: func(c chan<- os.Signal) { signal.Notify(c, syscall.SIGHUP) },
		Check:        sidecar.Check,
		SendTest:     sidecar.SendTest,
		Version:      version,
	}
	code := app.Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
