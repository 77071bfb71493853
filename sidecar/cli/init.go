package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/signin"
)

const initAbout = `
Create what Postern keeps on this host, once, before the first 'postern serve':

  - with the embedded store (store.file): a new key file and an empty database. Nothing is
    replaced: if the key file or the database exists, init refuses and changes nothing;
  - the sign-in key (signin.key_file) when the sign-in pages are on, and the API token
    (api.token_file) when the API is on, unless they exist (they are then kept).

With the Vault store there is no store to create here: projects live in Vault.

'postern serve' and every other command never create a store: a missing key file or database
stops them with the path and the fix, so that a state volume that did not mount never turns into a
new, empty store. The first 'postern project add' (or 'postern store import') may create the
embedded store too, and says so.`

func (a *App) initCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "init",
		Short: "create the store (file store) and the generated secret files, once",
		Long:  initAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return a.initHost(cmd.Context(), load) }
	return cmd
}

func (a *App) initHost(ctx context.Context, load configLoader) error {
	cfg, path, err := load()
	if err != nil {
		return err
	}
	if path == "" {
		fmt.Fprintf(a.Stdout, "no configuration file (%s): using the built-in defaults\n", a.configPath())
	}
	switch {
	case cfg.Store.File != nil && cfg.Store.Vault == nil:
		st, _, err := openStore(ctx, cfg, nil, fileInit)
		if err != nil {
			return err
		}
		if err := st.Close(); err != nil {
			return err
		}
		fmt.Fprintf(a.Stdout, "created the store key %s\n", cfg.Store.File.KeyFile)
		fmt.Fprintf(a.Stdout, "created the empty store %s\n", cfg.Store.File.Path)
	case cfg.Store.Vault != nil:
		fmt.Fprintln(a.Stdout, "the Vault store needs nothing created here: projects live in Vault")
	}
	type generated struct {
		path, what string
		load       func(string) error
	}
	var secrets []generated
	if cfg.SignInURL() != "" {
		secrets = append(secrets, generated{cfg.SignIn.KeyFile, "the sign-in key",
			func(p string) error { _, err := signin.LoadKey(p); return err }})
	}
	if cfg.API.TokenFile != "" {
		secrets = append(secrets, generated{cfg.API.TokenFile, "the API token",
			func(p string) error { _, err := admin.LoadAPIToken(p); return err }})
	}
	for _, s := range secrets {
		_, statErr := os.Stat(s.path)
		if err := s.load(s.path); err != nil {
			return err
		}
		if errors.Is(statErr, fs.ErrNotExist) {
			fmt.Fprintf(a.Stdout, "created %s %s\n", s.what, s.path)
		} else {
			fmt.Fprintf(a.Stdout, "kept %s %s\n", s.what, s.path)
		}
	}
	fmt.Fprint(a.Stdout, nextAfterInit(cfg))
	return nil
}

// nextAfterInit is what to do once init has run.
func nextAfterInit(cfg *config.Config) string {
	s := "\nnext:\n"
	if f := cfg.Store.File; f != nil && cfg.Store.Vault == nil {
		s += fmt.Sprintf("  - back up %s now: the store cannot be read without it, and Postern never makes a new one over a store\n", f.KeyFile)
	}
	s += "  - add a project:   postern project add NAME --sender ADDRESS --host SMTP-HOST ...\n"
	s += "  - wire Postfix:    postern postfix-config\n"
	s += "  - start Postern:   postern serve\n"
	return s
}
