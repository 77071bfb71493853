// Package cli holds the logic of the postern command's subcommands, so that it can be tested with
// in-memory input and output; cmd/postern only wires it to the process.
//
//  1. App.Run takes the arguments after the program name and picks the command: init, serve, project
//     (add, update, list, show, remove, enable, disable), import, authorize, authorize-link,
//     postfix-config, healthcheck, version (also --version) or help.
//  2. Each command parses its own flag.FlagSet; `postern help CMD` and `postern CMD -h` print its
//     usage. Flags may come before or after the positional arguments.
//  3. Commands that need the configuration read --config (default /etc/postern/postern.yaml; when
//     that default file does not exist, the built-in defaults apply).
//  4. Project commands open the store the configuration names with OpenStore and go through
//     store.Admin. Passwords and client secrets are read from the terminal without echo, or from
//     standard input with --password-stdin / --client-secret-stdin; never from a flag, and never
//     printed.
//  5. authorize and authorize-link sign an OAuth project's mailbox in (package signin): a link for
//     the mailbox owner, or the device code grant at this terminal, or an app-only token; the grant
//     is saved through a token broker over the same store.
//  6. store export, import, rekey and migrate back up, move and re-encrypt the store (package
//     store/transfer, store/boltstore), with progress on standard error.
//  7. serve validates the configuration and hands it to sidecar.Run, which runs until its context
//     is cancelled; check and send-test call sidecar.Check and sidecar.SendTest. The package calls
//     into sidecar, never the other way round.
//
// Exit codes: 0 success, 1 failure, 2 bad usage.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"

	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

// Runner runs the sidecar until ctx is cancelled, applying each configuration received from
// reloads as far as it can while running: sidecar.Serve.
type Runner func(ctx context.Context, cfg *config.Config, log *slog.Logger, reloads <-chan *config.Config) error

// App is the postern command. Its zero value is not usable: set Stdin, Stdout and Stderr at least.
type App struct {
	// Stdin, Stdout and Stderr are the command's standard streams.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// ReadPassword shows prompt and reads a line from the terminal without echo. Nil means there is no
	// terminal: commands that need a password then require --password-stdin.
	ReadPassword func(prompt string) (string, error)
	// Serve runs the sidecar for `postern serve`. Nil means sidecar.Serve.
	Serve Runner
	// NotifyReload has c receive the signal that asks `postern serve` to read its configuration
	// again (SIGHUP: signal.Notify). Nil means serve never reloads.
	NotifyReload func(c chan<- os.Signal)
	// OpenStore opens the store the configuration names. Nil means OpenStore.
	OpenStore func(ctx context.Context, cfg *config.Config) (store.Store, error)
	// ConfigPath is the configuration file used when --config is not given. Empty means
	// config.DefaultPath.
	ConfigPath string
	// Version is printed by `postern version`. Empty means the version stamped at build time
	// (package buildinfo).
	Version string

	// archiveWorkFactor is the scrypt work factor of `postern store export`; 0 means age's default.
	// Tests lower it.
	archiveWorkFactor int
}

type commandFunc func(ctx context.Context, a *App, args []string) int

type command struct {
	name, summary string
	run           commandFunc
}

// runGroup runs the command of a group (postern GROUP NAME ...) that args names: with no
// arguments, -h or help, the group's usage (help NAME: that command's); an unknown name is a usage
// error, noun being what the group's commands are called.
func (a *App) runGroup(ctx context.Context, group, noun string, cmds []command, usage func(io.Writer), args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		w, code := a.Stdout, ExitOK
		if len(args) == 0 {
			w, code = a.Stderr, ExitUsage
		}
		if len(args) > 1 && args[0] == "help" {
			return a.runGroup(ctx, group, noun, cmds, usage, []string{args[1], "-h"})
		}
		usage(w)
		return code
	}
	for _, c := range cmds {
		if c.name == args[0] {
			return c.run(ctx, a, args[1:])
		}
	}
	fmt.Fprintf(a.Stderr, "postern %s: unknown %s %q\n\n", group, noun, args[0])
	usage(a.Stderr)
	return ExitUsage
}

// commands returns the top-level commands in the order help lists them.
func commands() []command {
	return []command{
		{"serve", "run the sidecar, or check its configuration with --check-config", runServe},
		{"init", "create the store (file store) and the generated secret files, once", runInit},
		{"project", "add, update, list, show, remove, enable or disable projects", runProject},
		{"import", "create projects from sasl-xoauth2 or email-oauth2-proxy settings and tokens", runImport},
		{"store", "export, import, rekey or migrate the store of projects and tokens", runStore},
		{"authorize", "sign an OAuth project's mailbox in, or check an app-only registration", runAuthorize},
		{"authorize-link", "print a sign-in link for the owner of an OAuth project's mailbox", runAuthorizeLink},
		{"check", "check that each project can get its credential and sign in upstream", runCheck},
		{"send-test", "send a test message through a project's upstream", runSendTest},
		{"postfix-config", "print the main.cf and master.cf lines for this configuration", runPostfixConfig},
		{"healthcheck", "exit 0 if the running Postern is ready, 1 if not (for container health probes)", runHealthcheck},
		{"vault-policy", "print the Vault policies for the sidecar and for administrators", runVaultPolicy},
		{"version", "print the version", runVersion},
		{"help", "show help for a command", runHelp},
	}
}

// Run runs the command named by args (the arguments after the program name) and returns the exit
// code.
func (a *App) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		a.usage(a.Stderr)
		return ExitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		a.usage(a.Stdout)
		return ExitOK
	case "-version", "--version":
		return runVersion(ctx, a, args[1:])
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, a, args[1:])
		}
	}
	fmt.Fprintf(a.Stderr, "postern: unknown command %q\n\n", args[0])
	a.usage(a.Stderr)
	return ExitUsage
}

func (a *App) usage(w io.Writer) {
	fmt.Fprint(w, `Postern relays the mail of chosen Postfix senders through each client organisation's own mail
server, signed in with that organisation's credentials.

Usage:
  postern <command> [arguments]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-15s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Commands that read the configuration take --config FILE (default %s).
Run 'postern help <command>' or 'postern <command> -h' for its flags.
`, a.configPath())
}

func runHelp(ctx context.Context, a *App, args []string) int {
	if len(args) == 0 {
		a.usage(a.Stdout)
		return ExitOK
	}
	return a.Run(ctx, append(append([]string(nil), args...), "-h"))
}

func runVersion(_ context.Context, a *App, args []string) int {
	fs := a.newFlagSet("version", "", "Print Postern's version.")
	if _, code, ok := a.parse(fs, args, 0, 0); !ok {
		return code
	}
	info := buildinfo.Get()
	if a.Version != "" {
		info.Version = a.Version
	}
	fmt.Fprintf(a.Stdout, "postern %s\n", info)
	return ExitOK
}

func (a *App) configPath() string {
	if a.ConfigPath != "" {
		return a.ConfigPath
	}
	return config.DefaultPath
}

// flagSet is a command's flags with its usage text.
type flagSet struct {
	*flag.FlagSet
	synopsis, about string
}

// newFlagSet makes the flags of the command name ("project add"); synopsis shows its positional
// arguments and about describes it.
func (a *App) newFlagSet(name, synopsis, about string) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), synopsis: synopsis, about: about}
	fs.SetOutput(io.Discard)
	return fs
}

func (fs *flagSet) printUsage(w io.Writer) {
	line := "postern " + fs.Name()
	if fs.synopsis != "" {
		line += " " + fs.synopsis
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		line += " [flags]"
	}
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", line, strings.TrimSpace(fs.about))
	if hasFlags {
		var defaults strings.Builder
		fs.SetOutput(&defaults)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		// Go's flag package accepts -name and --name; show the usual --name.
		text := strings.ReplaceAll("\n"+defaults.String(), "\n  -", "\n  --")
		fmt.Fprint(w, "\nFlags:", strings.TrimRight(text, "\n"), "\n")
	}
}

// parse parses args, flags and positional arguments in any order, and checks that there are between
// minArgs and maxArgs positional arguments (maxArgs < 0: any number). When ok is false the command
// must return code: usage was printed, on request or because of an error.
func (a *App) parse(fs *flagSet, args []string, minArgs, maxArgs int) (positional []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.printUsage(a.Stdout)
				return nil, ExitOK, false
			}
			fmt.Fprintf(a.Stderr, "postern %s: %v\n\n", fs.Name(), err)
			fs.printUsage(a.Stderr)
			return nil, ExitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	if len(positional) < minArgs || (maxArgs >= 0 && len(positional) > maxArgs) {
		switch {
		case len(positional) < minArgs:
			fmt.Fprintf(a.Stderr, "postern %s: missing argument\n\n", fs.Name())
		default:
			fmt.Fprintf(a.Stderr, "postern %s: %d unexpected arguments\n\n", fs.Name(), len(positional)-maxArgs)
		}
		fs.printUsage(a.Stderr)
		return nil, ExitUsage, false
	}
	return positional, ExitOK, true
}

func isSet(fs *flagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// configFlag registers --config and returns a function loading the configuration it names.
func (a *App) configFlag(fs *flagSet) func() (*config.Config, string, bool) {
	path := fs.String("config", a.configPath(), "configuration `FILE`")
	return func() (*config.Config, string, bool) {
		return a.loadConfig(*path, isSet(fs, "config"))
	}
}

// loadConfig reads the configuration at path and prints each problem it has, prefixed with the file
// name. When the file is the default one (not given explicitly) and does not exist, the built-in
// defaults apply.
func (a *App) loadConfig(path string, explicit bool) (*config.Config, string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return config.Default(), "", true
		}
		fmt.Fprintf(a.Stderr, "postern: reading config: %v\n", err)
		return nil, path, false
	}
	cfg, err := config.Parse(b)
	if err != nil {
		a.printProblems(path, unjoin(err))
		return nil, path, false
	}
	return cfg, path, true
}

// printProblems prints one problem per line, prefixed with where it is.
func (a *App) printProblems(where string, errs []error) {
	for _, err := range errs {
		fmt.Fprintf(a.Stderr, "%s: %v\n", where, err)
	}
}

// unjoin splits an errors.Join error into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
