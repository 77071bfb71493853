// Package cli holds the logic of the postern command's subcommands, so that it can be tested with
// in-memory input and output; cmd/postern only wires it to the process.
//
//  1. App.Run builds the command tree (spf13/cobra) and runs the command that the arguments after
//     the program name pick: init, serve, project (add, update, list, show, remove, purge, enable,
//     disable), import, store, authorize, authorize-link, check, send-test, postfix-config,
//     healthcheck, vault-policy, version (also --version), completion, or help. `postern help CMD`
//     and `postern CMD -h` print its usage. Flags may come before or after the positional
//     arguments, and may be written -name as well as --name, as before the move to cobra.
//  2. Every command returns an error; Run alone turns it into a message on standard error and the
//     exit code (exitCode): 0 success, 1 failure, 2 bad usage (UsageError, followed by the
//     command's usage).
//  3. Commands that need the configuration read --config (default /etc/postern/postern.yaml; when
//     that default file does not exist, the built-in defaults apply).
//  4. Project commands open the store the configuration names with OpenStore and go through
//     store.Admin. Passwords and client secrets are read from the terminal without echo, or from
//     standard input with --password-stdin / --client-secret-stdin; never from a flag, and never
//     printed. Listings and checks print JSON for scripts with --json.
//  5. authorize and authorize-link sign an OAuth project's mailbox in (package signin): a link for
//     the mailbox owner, or the device code grant at this terminal, or an app-only token; the grant
//     is saved through a token broker over the same store.
//  6. store export, import, rekey and migrate back up, move and re-encrypt the store (package
//     store/transfer, store/boltstore), with progress on standard error.
//  7. serve validates the configuration and hands it to sidecar.Run, which runs until its context
//     is cancelled; check and send-test call sidecar.Check and sidecar.SendTest. The package calls
//     into sidecar, never the other way round.
//  8. `postern completion bash|zsh|fish` prints a shell completion script; project names are
//     completed from the embedded store (complete.go).
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/store"
)

// Exit codes, the same for every command (exitCode decides them).
const (
	ExitOK    = 0 // the command did what was asked
	ExitFail  = 1 // it failed, or found a problem (check: a project cannot deliver; healthcheck: not ready)
	ExitUsage = 2 // the command line is wrong: unknown command or flag, missing or extra argument, bad flag value
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

// Run runs the command named by args (the arguments after the program name) and returns the exit
// code. It is the one place where a command's error becomes a message and an exit code.
func (a *App) Run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(longFlags(root, args))
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil {
		a.report(cmd, err)
	}
	return exitCode(err)
}

// Command groups of `postern help`.
const (
	groupRun      = "run"
	groupProjects = "projects"
	groupStore    = "store"
	groupPostfix  = "setup"
)

const rootAbout = `Postern relays the mail of chosen Postfix senders through each client organisation's own mail
server, signed in with that organisation's credentials.

Commands that read the configuration take --config FILE (default %s).

Exit codes, for every command:
  0  success
  1  failure (check: a project cannot deliver; healthcheck: Postern is not ready)
  2  bad usage: unknown command or flag, missing or extra argument, bad flag value

Listings and checks print JSON for scripts with --json. Shell completion: 'postern completion -h'.`

// rootCommand builds the command tree; every command writes to the App's streams.
func (a *App) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "postern",
		Short:         "relay chosen Postfix senders through their organisation's own mail server",
		Long:          fmt.Sprintf(rootAbout, a.configPath()),
		Version:       a.version().String(),
		Args:          unknownCommand,
		RunE:          func(cmd *cobra.Command, _ []string) error { return usageErrorf("no command given") },
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(a.Stdin)
	root.SetOut(a.Stdout)
	root.SetErr(a.Stderr)
	root.SetVersionTemplate("postern {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })
	root.SetUsageFunc(func(c *cobra.Command) error { printUsage(c.OutOrStderr(), c); return nil })
	root.SetHelpFunc(func(c *cobra.Command, _ []string) { printUsage(c.OutOrStdout(), c) })
	root.SetHelpCommand(helpCommand())
	root.SetCompletionCommandGroupID(groupRun)
	root.SetHelpCommandGroupID(groupRun)
	root.AddGroup(
		&cobra.Group{ID: groupRun, Title: "Running Postern"},
		&cobra.Group{ID: groupProjects, Title: "Projects and their sign-in"},
		&cobra.Group{ID: groupStore, Title: "The store"},
		&cobra.Group{ID: groupPostfix, Title: "Wiring Postfix and Vault"},
	)
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add(groupRun, a.serveCommand(), a.initCommand(), a.healthcheckCommand(), a.versionCommand())
	add(groupProjects, a.projectCommand(), a.importCommand(), a.authorizeCommand(), a.authorizeLinkCommand(),
		a.checkCommand(), a.sendTestCommand())
	add(groupStore, a.storeCommand())
	add(groupPostfix, a.postfixConfigCommand(), a.vaultPolicyCommand())
	// cobra adds help and completion when it runs; added now, they are listed in help in their group.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Short = "print a shell completion script: bash, zsh, fish or powershell"
		}
	}
	return root
}

// helpCommand is `postern help [command...]`: the usage of the command named, on standard output.
func helpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command...]",
		Short: "show help for a command",
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := cmd.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usageErrorf("unknown command %q", strings.Join(args, " "))
			}
			printUsage(cmd.OutOrStdout(), target)
			return nil
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := cmd.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []cobra.Completion
			for _, c := range target.Commands() {
				if c.IsAvailableCommand() {
					names = append(names, cobra.CompletionWithDesc(c.Name(), c.Short))
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	}
}

// group makes a command that only holds others (project, import, store): without a command, or
// with an unknown one, it is a usage error; `postern GROUP help NAME` is NAME's help.
func group(use, short, long string, cmds ...*cobra.Command) *cobra.Command {
	g := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("no command given")
			}
			if args[0] == "help" {
				if len(args) == 1 {
					printUsage(cmd.OutOrStdout(), cmd)
					return nil
				}
				for _, c := range cmd.Commands() {
					if c.Name() == args[1] {
						printUsage(cmd.OutOrStdout(), c)
						return nil
					}
				}
				args = args[1:]
			}
			return usageErrorf("unknown command %q%s", args[0], suggestions(cmd, args[0]))
		},
	}
	g.AddCommand(cmds...)
	return g
}

// unknownCommand is the root's argument check: any argument is a command it does not have.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown command %q%s", args[0], suggestions(cmd, args[0]))
	}
	return nil
}

func suggestions(cmd *cobra.Command, arg string) string {
	s := cmd.SuggestionsFor(arg)
	if len(s) == 0 {
		return ""
	}
	return " (did you mean " + strings.Join(s, " or ") + "?)"
}

// printUsage prints a command's usage line, description, commands and flags.
func printUsage(w io.Writer, c *cobra.Command) {
	line := c.UseLine()
	if c.HasAvailableSubCommands() {
		line = c.CommandPath() + " <command> [arguments]"
	}
	about := c.Long
	if about == "" {
		about = c.Short
	}
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", line, strings.TrimSpace(about))
	if c.HasAvailableSubCommands() {
		cmds := c.Commands()
		width := 0
		for _, sub := range cmds {
			width = max(width, len(sub.Name()))
		}
		fmt.Fprint(w, "\nCommands:\n")
		indent, groups := "  ", c.Groups()
		if len(groups) == 0 {
			groups = []*cobra.Group{{}}
		} else {
			indent = "    "
		}
		for i, g := range groups {
			if i > 0 {
				fmt.Fprintln(w)
			}
			if g.Title != "" {
				fmt.Fprintf(w, "  %s:\n", g.Title)
			}
			for _, sub := range cmds {
				if sub.GroupID == g.ID && (sub.IsAvailableCommand() || sub.Name() == "help") {
					fmt.Fprintf(w, "%s%-*s  %s\n", indent, width, sub.Name(), sub.Short)
				}
			}
		}
		fmt.Fprintf(w, "\nRun '%s <command> -h' for its flags.\n", c.CommandPath())
		return
	}
	if c.HasAvailableFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", c.Flags().FlagUsages())
	}
}

// report prints a command's error on standard error: a usage error followed by the command's
// usage, several problems one per line, anything else as "postern CMD: error".
func (a *App) report(cmd *cobra.Command, err error) {
	path := "postern"
	if cmd != nil {
		path = cmd.CommandPath()
	}
	if p, ok := asProblems(err); ok {
		p.print(a.Stderr, path)
		return
	}
	if isReported(err) {
		return
	}
	fmt.Fprintf(a.Stderr, "%s: %v\n", path, err)
	if isUsage(err) && cmd != nil {
		fmt.Fprintln(a.Stderr)
		printUsage(a.Stderr, cmd)
	}
}

func (a *App) version() buildinfo.Info {
	info := buildinfo.Get()
	if a.Version != "" {
		info.Version = a.Version
	}
	return info
}

func (a *App) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Long:  "Print Postern's version (also: postern --version).",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(a.Stdout, "postern %s\n", a.version())
			return nil
		},
	}
}

func (a *App) configPath() string {
	if a.ConfigPath != "" {
		return a.ConfigPath
	}
	return config.DefaultPath
}
