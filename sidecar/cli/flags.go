package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/postern/postern/sidecar/config"
)

// exactArgs is a command's check that it has n positional arguments.
func exactArgs(n int) cobra.PositionalArgs { return rangeArgs(n, n) }

// rangeArgs is a command's check that it has between min and max positional arguments (max < 0:
// any number); too few or too many is a usage error.
func rangeArgs(min, max int) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) < min:
			return usageErrorf("missing argument")
		case max >= 0 && len(args) > max:
			return usageErrorf("%d unexpected arguments", len(args)-max)
		}
		return nil
	}
}

// longFlags rewrites the flags of args written with one dash (-config FILE, -json), as Go's flag
// package took them before the move to cobra, to the two dashes cobra reads. Only the names of the
// command's own flags are rewritten, and never a flag's value nor anything after "--".
func longFlags(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil {
		cmd = root
	}
	flags := pflag.NewFlagSet("", pflag.ContinueOnError)
	flags.AddFlagSet(cmd.Flags())
	flags.AddFlagSet(cmd.InheritedFlags())
	known := func(name string) *pflag.Flag {
		if f := flags.Lookup(name); f != nil {
			return f
		}
		if name == "help" || (name == "version" && cmd == root) {
			return &pflag.Flag{Name: name, NoOptDefVal: "true"}
		}
		return nil
	}
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		arg := args[i]
		out = append(out, arg)
		if arg == "--" {
			return append(out, args[i+1:]...)
		}
		if !strings.HasPrefix(arg, "-") || len(arg) < 2 {
			continue
		}
		dashes := "--"
		name := strings.TrimPrefix(arg, "--")
		if !strings.HasPrefix(arg, "--") {
			dashes, name = "-", arg[1:]
		}
		name, _, hasValue := strings.Cut(name, "=")
		f := known(name)
		if f == nil || (dashes == "-" && len(name) == 1) {
			continue
		}
		out[len(out)-1] = "--" + strings.TrimLeft(arg, "-")
		if !hasValue && f.NoOptDefVal == "" && i+1 < len(args) {
			i++ // the flag's value, whatever it looks like
			out = append(out, args[i])
		}
	}
	return out
}

// stringList is a repeatable flag; each value may also hold several items separated by commas.
type stringList []string

var _ pflag.Value = (*stringList)(nil)

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Type() string   { return "list" }

func (l *stringList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// configLoader loads the configuration --config names.
type configLoader func() (cfg *config.Config, path string, err error)

// configFlag registers --config on cmd and returns a function loading the configuration it names.
func (a *App) configFlag(cmd *cobra.Command) configLoader {
	path := cmd.Flags().String("config", a.configPath(), "configuration `FILE`")
	_ = cmd.MarkFlagFilename("config", "yaml", "yml")
	return func() (*config.Config, string, error) {
		return a.loadConfig(*path, cmd.Flags().Changed("config"))
	}
}

// loadConfig reads the configuration at path; its problems come back as one error listing each,
// prefixed with the file name. When the file is the default one (not given explicitly) and does
// not exist, the built-in defaults apply and path is empty.
func (a *App) loadConfig(path string, explicit bool) (*config.Config, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return config.Default(), "", nil
		}
		return nil, path, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := config.Parse(b)
	if err != nil {
		return nil, path, &problems{where: path, errs: unjoin(err)}
	}
	return cfg, path, nil
}

// jsonFlag registers --json on cmd, saying what it prints.
func jsonFlag(cmd *cobra.Command, what string) *bool {
	return cmd.Flags().Bool("json", false, "print "+what+" as JSON, for scripts (secrets never shown)")
}

// writeJSON prints v as indented JSON on w.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
