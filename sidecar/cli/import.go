package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/postern/postern/sidecar/importer"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

const importGroupAbout = `
Create projects, with their tokens where the tool holds usable ones, from the settings of the tool
that relays this mail today. Nothing is written unless every account can be imported; --dry-run
shows what would be.`

func (a *App) importCommand() *cobra.Command {
	return group("import", "create projects from sasl-xoauth2 or email-oauth2-proxy settings and tokens", importGroupAbout,
		a.importSASLCommand(), a.importEmailProxyCommand())
}

// importFlags are the flags every import takes.
type importFlags struct {
	dryRun, asJSON, replace bool
}

func (f *importFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&f.dryRun, "dry-run", false, "show what would be created; write nothing")
	fs.BoolVar(&f.asJSON, "json", false, "print the result as JSON for machines (secrets never shown)")
	fs.BoolVar(&f.replace, "replace", false, "replace projects that exist already (default: refuse)")
}

const importSASLAbout = `
Create one OAuth project per sasl-xoauth2 token file, with the file's token, so that the mailbox
needs no new sign-in while its refresh token is good. The client id and secret and the token
endpoint come from the token file or sasl-xoauth2's configuration; the provider (microsoft, google)
from the token endpoint.

Postfix's tables say which mailbox and server each token file is for:

  postern import sasl-xoauth2 --sasl-passwd /etc/postfix/sasl_passwd \
      --sender-relay /etc/postfix/sender_relay

imports every token file sasl_passwd names ("[smtp.office365.com]:587 user@client.co.uk:/etc/tokens/x",
or "user@client.co.uk user@client.co.uk:/etc/tokens/x" with sender-dependent authentication, whose
server then comes from sender_dependent_relayhost_maps). A path that does not exist is looked for
under --postfix-root too, as a chrooted Postfix does. Token files may also be named as arguments.

Once Postfix routes these senders through Postern, stop sasl-xoauth2 using the files: two programs
refreshing one grant can make the provider revoke it.`

func (a *App) importSASLCommand() *cobra.Command {
	var f importFlags
	var o saslOptions
	cmd := &cobra.Command{
		Use:   "sasl-xoauth2 [TOKEN-FILE...]",
		Short: "projects from sasl-xoauth2's token files and Postfix's sasl_passwd",
		Long:  importSASLAbout,
		Args:  rangeArgs(0, -1),
	}
	load := a.configFlag(cmd)
	f.register(cmd.Flags())
	cmd.Flags().StringVar(&o.config, "sasl-config", "/etc/sasl-xoauth2.conf", "sasl-xoauth2's configuration `FILE` (ignored when the default does not exist)")
	cmd.Flags().StringVar(&o.passwd, "sasl-passwd", "", "Postfix's smtp_sasl_password_maps source `FILE` (e.g. /etc/postfix/sasl_passwd)")
	cmd.Flags().StringVar(&o.relay, "sender-relay", "", "Postfix's sender_dependent_relayhost_maps source `FILE`")
	cmd.Flags().StringVar(&o.root, "postfix-root", "/var/spool/postfix", "the chroot `DIR` of Postfix's smtp client, where sasl_passwd's paths may point")
	cmd.RunE = func(cmd *cobra.Command, files []string) error {
		o.configGiven = cmd.Flags().Changed("sasl-config")
		return a.importSASL(cmd.Context(), load, f, o, files)
	}
	return cmd
}

// saslOptions are the flags of import sasl-xoauth2 that say where its files are.
type saslOptions struct {
	config, passwd, relay, root string
	configGiven                 bool // --sasl-config was given: it must exist
}

func (a *App) importSASL(ctx context.Context, load configLoader, f importFlags, o saslOptions, files []string) error {
	saslConfig, passwd, relay, root := &o.config, &o.passwd, &o.relay, &o.root
	fail := func(errs ...error) error {
		return &problems{errs: errs, outro: "nothing was imported"}
	}
	var in importer.SASLInput
	if b, err := os.ReadFile(*saslConfig); err == nil {
		if in.Config, err = importer.ParseSASLConfig(*saslConfig, b); err != nil {
			return fail(err)
		}
	} else if o.configGiven || !errors.Is(err, os.ErrNotExist) {
		return fail(err)
	}
	for _, m := range []struct {
		file    string
		name    *string
		entries *[]importer.MapEntry
	}{{*passwd, &in.PasswdFile, &in.Passwd}, {*relay, &in.RelayFile, &in.Relay}} {
		if m.file == "" {
			continue
		}
		b, err := os.ReadFile(m.file)
		if err != nil {
			return fail(err)
		}
		*m.name = m.file
		if *m.entries, err = importer.ParsePostfixMap(m.file, b); err != nil {
			return fail(err)
		}
	}
	// resolve finds a path of sasl_passwd: as it is, or under the Postfix chroot.
	resolve := func(p string) string {
		if _, err := os.Stat(p); err != nil && *root != "" {
			if _, err := os.Stat(filepath.Join(*root, p)); err == nil {
				return filepath.Join(*root, p)
			}
		}
		return p
	}
	in.SamePath = func(p, file string) bool { return absPath(resolve(p)) == absPath(file) }
	if len(files) == 0 {
		if *passwd == "" {
			return usageErrorf("name token files, or --sasl-passwd to import those it points at")
		}
		seen := map[string]bool{}
		for _, e := range in.Passwd {
			if _, p, ok := strings.Cut(e.Value, ":"); ok && !seen[resolve(p)] {
				seen[resolve(p)] = true
				files = append(files, resolve(p))
			}
		}
	}
	var errs []error
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t, err := importer.ParseSASLToken(file, b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		in.Tokens = append(in.Tokens, t)
	}
	if len(errs) > 0 {
		return fail(errs...)
	}
	accounts, err := importer.SASLXOAuth2(in)
	if err != nil {
		return fail(unjoin(err)...)
	}
	return a.importAccounts(ctx, load, f, accounts,
		"stop sasl-xoauth2 using the imported token files once Postfix routes these senders through Postern: two programs refreshing one grant can make the provider revoke it")
}

func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return filepath.Clean(p)
}

const importEmailProxyAbout = `
Create one OAuth project per account section of an email-oauth2-proxy configuration
(emailproxy.config): the mailbox from the section name, the client id and secret and the provider
from its settings, and the upstream from the [SMTP-port] server sections.

email-oauth2-proxy encrypts the tokens it caches with the password each mail client uses with the
proxy. Postern does not have those passwords, so these mailboxes are signed in again, once, through
the link 'postern authorize-link' prints.`

func (a *App) importEmailProxyCommand() *cobra.Command {
	var f importFlags
	cmd := &cobra.Command{
		Use:   "email-oauth2-proxy CONFIG",
		Short: "projects from email-oauth2-proxy's configuration",
		Long:  importEmailProxyAbout,
		Args:  exactArgs(1),
	}
	load := a.configFlag(cmd)
	f.register(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		b, err := os.ReadFile(args[0])
		if err == nil {
			var accounts []importer.Account
			if accounts, err = importer.EmailOAuth2Proxy(args[0], b); err == nil {
				return a.importAccounts(cmd.Context(), load, f, accounts,
					"stop email-oauth2-proxy relaying for these mailboxes once Postfix routes their senders through Postern")
			}
		}
		return &problems{errs: unjoin(err), outro: "nothing was imported"}
	}
	return cmd
}

// importResult is what the import says of one account; it holds no secret.
type importResult struct {
	Project  string   `json:"project,omitempty"`
	Source   string   `json:"source"`
	Mailbox  string   `json:"mailbox,omitempty"`
	Upstream string   `json:"upstream,omitempty"`
	Provider string   `json:"provider,omitempty"`
	Action   string   `json:"action"` // created, replaced, would create, would replace, skipped
	Token    string   `json:"token"`  // imported, none
	Todo     []string `json:"todo"`
	Notes    []string `json:"notes,omitempty"`
}

// importAccounts checks every account against the store, then writes them all, or none.
func (a *App) importAccounts(ctx context.Context, load configLoader, f importFlags, accounts []importer.Account, after string) error {
	// Like the first `project add`, an import makes the file store where there is none yet (and
	// says so); a dry run makes nothing and compares with an empty store.
	mode := fileCreate
	if f.dryRun {
		mode = fileMaybe
	}
	cfg, st, err := a.openConfigStoreMode(ctx, load, mode)
	if err != nil {
		return err
	}
	var all []project.Project
	if st != nil {
		defer st.Close()
		if all, err = st.Projects(ctx); err != nil {
			return err
		}
	}
	existing := map[string]project.Project{}
	for _, p := range all {
		if !p.IsRemoved() { // a removed project's name is free again, as for project add
			existing[p.Name] = p
		}
	}

	// 1. Check everything.
	var found []error
	var todo []importer.Account
	names := map[string]string{}
	for _, acc := range accounts {
		if acc.Skipped != "" {
			continue
		}
		p := acc.Project
		if src, dup := names[p.Name]; dup {
			found = append(found, fmt.Errorf("%s: project %s comes from %s too", acc.Source, p.Name, src))
			continue
		}
		names[p.Name] = acc.Source
		if _, exists := existing[p.Name]; exists && !f.replace {
			found = append(found, fmt.Errorf("%s: project %s exists: give --replace to replace it", acc.Source, p.Name))
			continue
		}
		todo = append(todo, acc)
	}
	for _, acc := range todo {
		p := acc.Project
		others := make([]project.Project, 0, len(all)+len(todo))
		for _, o := range all {
			if _, replaced := names[o.Name]; !replaced {
				others = append(others, o)
			}
		}
		for _, o := range todo {
			if o.Project.Name != p.Name {
				others = append(others, o.Project)
			}
		}
		errs := append(p.Validate(), project.SenderConflicts(p, others)...)
		errs = append(errs, oauthProblems(p, false)...)
		for _, err := range errs {
			found = append(found, fmt.Errorf("%s: project %s: %v", acc.Source, p.Name, err))
		}
	}
	if len(found) > 0 {
		return &problems{errs: found, outro: "nothing was imported"}
	}

	// 2. Write.
	results := make([]importResult, 0, len(accounts))
	written := 0
	for _, acc := range accounts {
		r := importResult{Source: acc.Source, Token: "none", Todo: append([]string{}, acc.Todo...), Notes: acc.Notes}
		if acc.Skipped != "" {
			r.Action, r.Todo = "skipped", append(r.Todo, acc.Skipped)
			results = append(results, r)
			continue
		}
		p := acc.Project
		r.Project, r.Mailbox, r.Upstream, r.Provider = p.Name, p.Auth.Username, p.Upstream.Address()+" "+string(p.Upstream.TLS), p.Auth.OAuth.Provider
		old, exists := existing[p.Name]
		r.Action = map[bool]string{false: "created", true: "replaced"}[exists]
		if f.dryRun {
			r.Action = "would " + strings.TrimSuffix(r.Action, "d")
		}
		if acc.Token != nil {
			r.Token = "imported"
		}
		if !f.dryRun {
			if err := writeImported(ctx, st, p, old.Version, acc.Token); err != nil {
				return &problems{errs: []error{fmt.Errorf("%s: %w", acc.Source, err)},
					outro: fmt.Sprintf("%d of %d projects were written before this failure; run the command again with --replace to finish", written, len(todo))}
			}
			written++
		}
		switch {
		case acc.Token != nil && len(r.Todo) == 0:
			r.Todo = []string{fmt.Sprintf("nothing: the token was imported and Postern refreshes it when due ('postern check %s' tries it now)", p.Name)}
		case acc.Token == nil && p.Auth.OAuth.Grant != "client_credentials":
			r.Todo = append(r.Todo, nextStep(p, cfg.SignInURL()))
		case acc.Token == nil:
			r.Todo = append(r.Todo, nextStep(p, ""))
		}
		results = append(results, r)
	}
	if f.asJSON {
		return writeJSON(a.Stdout, map[string]any{"dry_run": f.dryRun, "accounts": results})
	}
	for _, r := range results {
		if r.Action == "skipped" {
			fmt.Fprintf(a.Stdout, "skipped %s\n", r.Source)
		} else {
			fmt.Fprintf(a.Stdout, "%s project %s: mailbox %s via %s (%s), token %s\n  from %s\n", r.Action, r.Project, r.Mailbox, r.Upstream, r.Provider, r.Token, r.Source)
		}
		for _, n := range r.Notes {
			fmt.Fprintf(a.Stdout, "  note: %s\n", n)
		}
		for _, t := range r.Todo {
			fmt.Fprintf(a.Stdout, "  to do: %s\n", t)
		}
	}
	if f.dryRun {
		fmt.Fprintln(a.Stdout, "dry run: nothing was written")
	} else if written > 0 {
		fmt.Fprintf(a.Stdout, "then: %s\n", after)
	}
	return nil
}

// writeImported writes a project (replacing version oldVersion when not 0) and its token.
func writeImported(ctx context.Context, st store.Store, p project.Project, oldVersion int, tok *project.Token) error {
	p.Version = oldVersion
	if _, err := st.PutProject(ctx, p); err != nil {
		return fmt.Errorf("writing project %s: %w", p.Name, err)
	}
	if tok == nil {
		return nil
	}
	t := *tok
	cur, err := st.Token(ctx, p.Name)
	switch {
	case err == nil:
		t.Version = cur.Version
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("reading the token of project %s: %w", p.Name, err)
	}
	if _, err := st.PutToken(ctx, p.Name, t); err != nil {
		return fmt.Errorf("writing the token of project %s: %w", p.Name, err)
	}
	return nil
}
