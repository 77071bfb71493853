package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/transfer"
)

// The store commands: `postern store export|import|rekey|migrate`. They work on the store the
// configuration names, report progress on standard error, and never print a secret.

func (a *App) storeCommand() *cobra.Command {
	return group("store", "export, import, rekey or migrate the store of projects and tokens",
		"Back up, move and re-encrypt the store of projects and tokens the configuration names.\n\n"+
			"With --json, each command prints its result as one JSON object on standard output\n"+
			"(store export: only when the archive is not written to standard output).",
		a.storeExportCommand(), a.storeImportCommand(), a.storeRekeyCommand(), a.storeMigrateCommand())
}

// storeResult is what a store command did, for --json.
type storeResult struct {
	Action   string `json:"action"` // exported, imported, rekeyed, copied
	Projects int    `json:"projects"`
	Tokens   int    `json:"tokens"`
	File     string `json:"file,omitempty"` // the archive
	From     string `json:"from,omitempty"` // migrate: the stores, described without secrets
	To       string `json:"to,omitempty"`
}

// done says what a store command did: message on standard error, or with asJSON r (a storeResult,
// or rekeyResult) on standard output.
func (a *App) done(asJSON bool, r any, message string) error {
	if asJSON {
		return writeJSON(a.Stdout, r)
	}
	fmt.Fprintln(a.Stderr, message)
	return nil
}

// storeLogger reports the store's own events (a migration of the old file format, a new key) on
// standard error.
func (a *App) storeLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(a.Stderr, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(groups []string, attr slog.Attr) slog.Attr {
			if len(groups) == 0 && attr.Key == slog.TimeKey {
				return slog.Attr{} // a command's own output needs no time stamp
			}
			return attr
		},
	}))
}

// openStoreLogged opens the configured store with its events on standard error, unless App.OpenStore
// replaces the opening.
func (a *App) openStoreLogged(ctx context.Context, cfg *config.Config) (store.Store, error) {
	if a.OpenStore != nil {
		return a.OpenStore(ctx, cfg)
	}
	return OpenStoreLogged(ctx, cfg, a.storeLogger())
}

// progressPrinter prints "stage: done/total (pct%)" on w at every tenth of the way and at the end.
func progressPrinter(w io.Writer) func(stage string, done, total int) {
	lastStage, lastTenth := "", -1
	return func(stage string, done, total int) {
		if total <= 0 {
			return
		}
		tenth := done * 10 / total
		if stage == lastStage && tenth == lastTenth {
			return
		}
		lastStage, lastTenth = stage, tenth
		fmt.Fprintf(w, "%s: %d/%d (%d%%)\n", stage, done, total, done*100/total)
	}
}

// passphraseFlags are the ways to give an archive's passphrase.
type passphraseFlags struct {
	file  string
	stdin bool
}

func (f *passphraseFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.file, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	fs.BoolVar(&f.stdin, "passphrase-stdin", false, "read the passphrase from standard input")
}

// passphrase reads the passphrase from a file, from standard input, or from the terminal (twice when
// confirm is set).
func (a *App) passphrase(f passphraseFlags, confirm bool) (secret.Secret, error) {
	switch {
	case f.file != "" && f.stdin:
		return secret.Secret{}, errors.New("give the passphrase with --passphrase-file or --passphrase-stdin, not both")
	case f.file != "":
		b, err := os.ReadFile(f.file)
		if err != nil {
			return secret.Secret{}, fmt.Errorf("reading the passphrase: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			return secret.Secret{}, fmt.Errorf("the passphrase file %s is empty", f.file)
		}
		return secret.New(line), nil
	case f.stdin:
		return a.readSecret(true, "passphrase", "--passphrase-stdin", "")
	case confirm:
		return a.readSecret(false, "passphrase", "--passphrase-stdin or --passphrase-file", "Passphrase for the archive: ")
	}
	if a.ReadPassword == nil {
		return secret.Secret{}, errors.New("no terminal to ask for the passphrase: use --passphrase-stdin or --passphrase-file")
	}
	pw, err := a.ReadPassword("Passphrase of the archive: ")
	if err != nil {
		return secret.Secret{}, err
	}
	return secret.New(pw), nil
}

const exportAbout = `
Write every project and token of the store to FILE ("-": standard output), encrypted with a
passphrase (age, scrypt), for a backup or to move the store to another host. The archive holds the
secrets: keep the passphrase apart from it. FILE is written with mode 0600 and replaced only once
complete.

  postern store export --passphrase-file /root/backup.pass /root/postern-$(date +%F).age
`

func (a *App) storeExportCommand() *cobra.Command {
	var pf passphraseFlags
	cmd := &cobra.Command{
		Use:   "export FILE",
		Short: "write every project and token to an encrypted archive",
		Long:  exportAbout,
		Args:  exactArgs(1),
	}
	load := a.configFlag(cmd)
	pf.register(cmd.Flags())
	asJSON := jsonFlag(cmd, "the result")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		out := args[0]
		switch {
		case out == "-" && pf.stdin:
			return usageErrorf("standard output holds the archive; give the passphrase with --passphrase-file")
		case out == "-" && *asJSON:
			return usageErrorf("standard output holds the archive: --json needs a FILE")
		}
		return a.storeExport(cmd.Context(), load, pf, out, *asJSON)
	}
	return cmd
}

func (a *App) storeExport(ctx context.Context, load configLoader, pf passphraseFlags, out string, asJSON bool) error {
	pass, err := a.passphrase(pf, true)
	if err != nil {
		return err
	}
	if len(pass.Reveal()) < transfer.MinPassphrase {
		return fmt.Errorf("the passphrase must be at least %d characters", transfer.MinPassphrase)
	}
	cfg, _, err := load()
	if err != nil {
		return err
	}
	st, err := a.openStoreLogged(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	progress := progressPrinter(a.Stderr)
	snap, err := transfer.Read(ctx, st, transfer.Options{Progress: progress})
	if err != nil {
		return err
	}
	write := func(w io.Writer) error {
		return transfer.Export(w, snap, pass.Reveal(), transfer.ArchiveOptions{Progress: progress, WorkFactor: a.archiveWorkFactor})
	}
	if out == "-" {
		err = write(a.Stdout)
	} else {
		err = writeFileAtomic(out, write)
	}
	if err != nil {
		return err
	}
	projects, tokens := snap.Counts()
	return a.done(asJSON, storeResult{Action: "exported", Projects: projects, Tokens: tokens, File: out},
		fmt.Sprintf("exported %d projects and %d tokens to %s", projects, tokens, out))
}

// writeFileAtomic writes path through write: a temporary file beside it (mode 0600), fsync,
// rename. path is not touched when write fails.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if err = write(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

const importAbout = `
Add the projects and tokens of an archive written by 'postern store export' to the store. The
archive is read and checked whole first. A project or token the store holds already stops the
import before anything is written, unless --replace is given. Where neither the embedded store nor
its key file exists yet, the import makes them (as 'postern init' would), and says so.
`

func (a *App) storeImportCommand() *cobra.Command {
	var pf passphraseFlags
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "add the projects and tokens of an archive to the store",
		Long:  importAbout,
		Args:  exactArgs(1),
	}
	load := a.configFlag(cmd)
	pf.register(cmd.Flags())
	replace := cmd.Flags().Bool("replace", false, "overwrite the projects and tokens the store holds already")
	asJSON := jsonFlag(cmd, "the result")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if args[0] == "-" && pf.stdin {
			return usageErrorf("standard input holds the archive; give the passphrase with --passphrase-file")
		}
		return a.storeImport(cmd.Context(), load, pf, args[0], *replace, *asJSON)
	}
	return cmd
}

func (a *App) storeImport(ctx context.Context, load configLoader, pf passphraseFlags, in string, replace, asJSON bool) error {
	pass, err := a.passphrase(pf, false)
	if err != nil {
		return err
	}
	r := a.Stdin
	if in != "-" {
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	progress := progressPrinter(a.Stderr)
	snap, err := transfer.ReadArchive(r, pass.Reveal(), transfer.ArchiveOptions{Progress: progress})
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	cfg, _, err := load()
	if err != nil {
		return err
	}
	// Like the first `postern project add`, an import may make the embedded store where neither of
	// its files exists (moving to a new host), and says so.
	st, err := a.openStoreMode(ctx, cfg, fileCreate)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := transfer.Write(ctx, st, snap, transfer.Options{Replace: replace, Progress: progress}); err != nil {
		return err
	}
	projects, tokens := snap.Counts()
	return a.done(asJSON, storeResult{Action: "imported", Projects: projects, Tokens: tokens, File: in},
		fmt.Sprintf("imported %d projects and %d tokens from %s", projects, tokens, in))
}

const rekeyAbout = `
Re-encrypt every record of the embedded store under a new key, written to the key file. The change
is atomic: a crash leaves the store under the old key or under the new one, and Postern finds
either. A running 'postern serve' picks the new key up at its next read. Back up the new key file;
backups of the store made before need the old one (archives from 'postern store export' have their
own passphrase and are not affected).
`

func (a *App) storeRekeyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rekey",
		Short: "re-encrypt the embedded store under a new key",
		Long:  rekeyAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	asJSON := jsonFlag(cmd, "the result")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.storeRekey(cmd.Context(), load, *asJSON)
	}
	return cmd
}

// rekeyResult is what `store rekey --json` prints.
type rekeyResult struct {
	Action  string `json:"action"`  // rekeyed
	Records int    `json:"records"` // re-encrypted
	File    string `json:"file"`    // the store
	KeyFile string `json:"key_file"`
}

func (a *App) storeRekey(ctx context.Context, load configLoader, asJSON bool) error {
	cfg, _, err := load()
	if err != nil {
		return err
	}
	if cfg.Store.File == nil {
		return errors.New("the store is Vault, which encrypts with its own keys: rotate them with 'vault operator rotate'")
	}
	st, err := a.openStoreLogged(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	rk, ok := st.(interface {
		Rekey(ctx context.Context, progress func(done, total int)) error
	})
	if !ok {
		return errors.New("this store cannot be rekeyed")
	}
	progress := progressPrinter(a.Stderr)
	records := 0
	if err := rk.Rekey(ctx, func(done, total int) { records = total; progress("re-encrypting", done, total) }); err != nil {
		return err
	}
	f := cfg.Store.File
	return a.done(asJSON, rekeyResult{Action: "rekeyed", Records: records, File: f.Path, KeyFile: f.KeyFile},
		fmt.Sprintf("rekeyed the store %s; the new key is in %s: back it up", f.Path, f.KeyFile))
}

const migrateAbout = `
Copy every project and token from the store the configuration names into another kind of store:
--to vault from the embedded store, --to file from Vault. The target is the store section of
--to-config FILE (another configuration file; only its store section is used), or else, for Vault,
Vault's own environment (VAULT_ADDR, VAULT_TOKEN, ...) with mount "secret" and prefix "postern", and
for the embedded store its default files (created where neither the database nor its key file
exists; one without the other is refused). A project or token the target
holds already stops the migration before anything is written, unless --replace is given.

Postern keeps using the configured store until the configuration is changed to name the target:

  postern store migrate --to vault --to-config /etc/postern/postern-vault.yaml
  mv /etc/postern/postern-vault.yaml /etc/postern/postern.yaml   # then restart postern serve

A store in the format of earlier versions (one encrypted file) is moved to the embedded database
the first time any command opens it; the old file is kept beside it with the suffix .migrated.
`

func (a *App) storeMigrateCommand() *cobra.Command {
	var o migrateOptions
	cmd := &cobra.Command{
		Use:   "migrate --to KIND",
		Short: "copy every project and token to Vault, or from Vault to the embedded store",
		Long:  migrateAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	cmd.Flags().StringVar(&o.to, "to", "", "the `KIND` of store to copy to: vault or file")
	cmd.Flags().StringVar(&o.toConfig, "to-config", "", "configuration `FILE` whose store section is the target")
	cmd.Flags().BoolVar(&o.replace, "replace", false, "overwrite the projects and tokens the target holds already")
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print the result as JSON, for scripts")
	_ = cmd.RegisterFlagCompletionFunc("to", cobra.FixedCompletions([]string{"vault", "file"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.to != "vault" && o.to != "file" {
			return usageErrorf("--to must be vault or file, not %q", o.to)
		}
		return a.storeMigrate(cmd.Context(), load, o)
	}
	return cmd
}

// migrateOptions are the flags of store migrate.
type migrateOptions struct {
	to, toConfig    string
	replace, asJSON bool
}

func (a *App) storeMigrate(ctx context.Context, load configLoader, o migrateOptions) error {
	to, toConfig := &o.to, &o.toConfig
	cfg, _, err := load()
	if err != nil {
		return err
	}
	target := &config.Config{}
	if *toConfig != "" {
		if target, _, err = a.loadConfig(*toConfig, true); err != nil {
			return err
		}
	} else if *to == "vault" {
		target.Store.Vault = &config.VaultConfig{Mount: config.DefaultVaultMount, Prefix: config.DefaultVaultPrefix}
	} else {
		target.Store.File = &config.FileStore{Path: config.DefaultStorePath, KeyFile: config.DefaultStoreKeyFile}
	}
	switch {
	case *to == "vault" && target.Store.Vault == nil:
		return fmt.Errorf("%s names no Vault store (store.vault)", *toConfig)
	case *to == "file" && target.Store.File == nil:
		return fmt.Errorf("%s names no embedded store (store.file)", *toConfig)
	case *to == "vault" && cfg.Store.Vault != nil, *to == "file" && cfg.Store.File != nil:
		return fmt.Errorf("the configured store is already a %s store; to move it to another host use 'postern store export' and 'import'", *to)
	}
	target.Store.Vault, target.Store.File = pick(*to == "vault", target.Store.Vault), pick(*to == "file", target.Store.File)

	src, err := a.openStoreLogged(ctx, cfg)
	if err != nil {
		return err
	}
	defer src.Close()
	var dst store.Store
	if f := target.Store.File; f != nil && a.OpenStore == nil {
		// The target is made where neither of its files exists; one without the other is refused.
		var b *boltstore.Store
		if b, err = sidecar.OpenEmbedded(ctx, f, a.storeLogger(), true); err == nil {
			dst = b
			if b.Created() {
				fmt.Fprintf(a.Stderr, "postern: created a new, empty store %s with its key file %s; back the key file up: the store cannot be read without it\n", f.Path, f.KeyFile)
			}
		}
	} else {
		dst, err = a.openStoreLogged(ctx, target)
	}
	if err != nil {
		return fmt.Errorf("the target: %w", err)
	}
	defer dst.Close()
	snap, err := transfer.Copy(ctx, dst, src, transfer.Options{Replace: o.replace, Progress: progressPrinter(a.Stderr)})
	if err != nil {
		return err
	}
	projects, tokens := snap.Counts()
	from, into := describeStore(cfg), describeStore(target)
	return a.done(o.asJSON, storeResult{Action: "copied", Projects: projects, Tokens: tokens, From: from, To: into},
		fmt.Sprintf("copied %d projects and %d tokens from %s to %s\n", projects, tokens, from, into)+
			"Postern keeps using the configured store until the configuration names the new one; then restart postern serve.")
}

func pick[T any](keep bool, v *T) *T {
	if keep {
		return v
	}
	return nil
}

// describeStore names a configuration's store without any secret.
func describeStore(cfg *config.Config) string {
	if v := cfg.Store.Vault; v != nil {
		addr := v.Address
		if addr == "" {
			addr = os.Getenv("VAULT_ADDR")
		}
		return fmt.Sprintf("Vault %s (%s/%s)", addr, v.Mount, v.Prefix)
	}
	if f := cfg.Store.File; f != nil {
		return "the embedded store " + f.Path
	}
	return "no store"
}
