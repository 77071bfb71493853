package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
)

const addAbout = `
Add a project: a client organisation's mailbox, the envelope senders Postfix routes through it, and
the upstream server Postern delivers their mail to.

For basic authentication the password is asked on the terminal without echo, or read from standard
input with --password-stdin:

  printf '%s' "$PASSWORD" | postern project add client-a --sender noreply@client.co.uk \
      --host smtp.client.co.uk --username noreply@client.co.uk --password-stdin

For OAuth 2.0 (XOAUTH2), --username is the mailbox that signs in, and the app registration at the
identity provider is given with --provider, --client-id and the like; a client secret is read like a
password, with --client-secret-stdin or --client-secret-prompt:

  printf '%s' "$SECRET" | postern project add client-b --sender noreply@client-b.com \
      --host smtp.office365.com --username noreply@client-b.com --auth oauth2 \
      --provider microsoft --tenant client-b.com --client-id 0b6f... --client-secret-stdin

Give the client secret's expiry date as the provider's portal shows it (Microsoft Entra: App
registrations, Certificates & secrets), with --client-secret-expires 2027-03-31: the project turns
degraded on /status tokens.client_secret_warning (default 30 days) before it, failing once it has
passed, and postern_oauth_client_secret_expiry_timestamp_seconds lets Prometheus alert.

The mailbox is then signed in once: 'postern authorize-link', 'postern authorize --device', or for
--grant client_credentials no sign-in at all ('postern authorize' checks the registration).

Default scopes, when --scopes is not given: microsoft "https://outlook.office.com/SMTP.Send
offline_access openid email profile" (client_credentials: "https://outlook.office365.com/.default");
google "https://mail.google.com/ openid email"; generic "openid email offline_access" (add the
server's mail scope with --scopes if it has one). With --provider generic, give --issuer: the
id_token is then verified with the issuer's keys, and when it does not name the mailbox (standard
OpenID providers put email at the userinfo endpoint), the userinfo endpoint from the issuer's
/.well-known/openid-configuration is asked.

Upstream limits per mailbox (--messages-per-minute, --recipients-per-day, --max-connections,
--max-recipients): a limit left at 0 is the provider's default, by --provider or host. Microsoft
(smtp.office365.com): 30 messages a minute, 10,000 recipients a day, 3 connections, 500 recipients
a message. Google (smtp.gmail.com): 100 recipients a message. Others: 3 connections, no other
limit. Replicas sharing the store split every limit (limits.replicas); postern project show shows them.

Access tokens are refreshed tokens.refresh_margin (default 10m) before they expire, but at most half
their lifetime before: a token living 50 seconds is used for 25 seconds, not refreshed on every
delivery.

Nothing is written unless every setting is valid; all problems are listed at once.`

func (a *App) projectAddCommand() *cobra.Command {
	var f projectFlags
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "add a project",
		Long:  addAbout,
		Args:  exactArgs(1),
	}
	load := a.configFlag(cmd)
	f.register(cmd.Flags(), false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.projectAdd(cmd.Context(), load, cmd.Flags(), &f, args[0])
	}
	return cmd
}

func (a *App) projectAdd(ctx context.Context, load configLoader, fs *pflag.FlagSet, f *projectFlags, name string) error {
	p := project.Project{Name: name, Enabled: true}
	problems := f.apply(fs, &p, true)

	// The first project may make the file store, where neither of its files exists: st is nil
	// until every setting is checked.
	cfg, st, err := a.openConfigStoreMode(ctx, load, fileMaybe)
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
	for _, o := range all {
		if o.Name != p.Name {
			continue
		}
		if !o.IsRemoved() {
			return fmt.Errorf("project %s exists: change it with 'postern project update %s'", p.Name, p.Name)
		}
		// Adding a removed project again replaces its tombstone: its queued mail flows again.
		p.Version = o.Version
	}
	problems = append(problems, project.SenderConflicts(p, all)...)
	newSecret := f.secretStdin || f.secretPrompt
	problems = append(problems, oauthProblems(p, newSecret)...)

	needPassword := p.Auth.Type == project.AuthBasic
	if err := checkProject(p, needPassword, problems); err != nil {
		return err
	}
	if needPassword {
		pw, err := a.password(f.passwordStdin, fmt.Sprintf("Password of %s at %s: ", p.Auth.Username, p.Upstream.Host))
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		p.Auth.Password = pw
	} else if f.passwordStdin {
		return fmt.Errorf("--password-stdin: the project signs in with %s, without a password", p.Auth.Type)
	}
	if newSecret {
		sec, err := a.clientSecret(f.secretStdin, p.Auth.OAuth.ClientID)
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		p.Auth.OAuth.ClientSecret = sec
	}
	if st == nil {
		if st, err = a.openStoreMode(ctx, cfg, fileCreate); err != nil {
			return err
		}
		defer st.Close()
	}
	v, err := st.PutProject(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("project %s was changed by someone else meanwhile; nothing was changed, run the command again", p.Name)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "added project %s (version %d)\n", p.Name, v)
	if step := nextStep(p, cfg.SignInURL()); step != "" {
		fmt.Fprintf(a.Stdout, "next: %s\n", step)
	}
	return nil
}

const updateAbout = `
Change the settings of a project: only the flags given change. --sender and --send-as replace their
lists. To change the password:

  postern project update client-a --password-stdin      (the password on standard input)
  postern project update client-a --password-prompt     (asked on the terminal)

To move a project from basic authentication to OAuth 2.0, and back, without touching Postfix:

  printf '%s' "$SECRET" | postern project update client-a --auth oauth2 --provider microsoft \
      --tenant client.co.uk --client-id 0b6f... --client-secret-stdin
  printf '%s' "$PASSWORD" | postern project update client-a --auth basic --password-stdin

A new client secret comes with its expiry date; without --client-secret-expires the old secret's
date is dropped:

  printf '%s' "$SECRET" | postern project update client-b --client-secret-stdin --client-secret-expires 2027-03-31

Switching to oauth2 drops the password; switching back drops the OAuth settings. An OAuth project's
mailbox must then be signed in (see 'postern authorize'); its mail waits in Postfix's queue meanwhile.

Nothing is written unless every setting is valid; all problems are listed at once.`

func (a *App) projectUpdateCommand() *cobra.Command {
	var f projectFlags
	cmd := &cobra.Command{
		Use:               "update NAME",
		Short:             "change some settings of a project",
		Long:              updateAbout,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	f.register(cmd.Flags(), true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.projectUpdate(cmd.Context(), load, cmd.Flags(), &f, args[0])
	}
	return cmd
}

func (a *App) projectUpdate(ctx context.Context, load configLoader, fs *pflag.FlagSet, f *projectFlags, name string) error {
	cfg, st, err := a.openConfigStore(ctx, load)
	if err != nil {
		return err
	}
	defer st.Close()
	p, err := st.Project(ctx, name)
	if err == nil && p.IsRemoved() {
		err = removedError(p)
	}
	if err != nil {
		return ExplainNotFound(err, name)
	}
	wasOAuth := p.Auth.Type == project.AuthOAuth2
	problems := f.apply(fs, &p, false)
	all, err := st.Projects(ctx)
	if err != nil {
		return err
	}
	problems = append(problems, project.SenderConflicts(p, all)...)

	newPassword := f.passwordStdin || f.passwordPrompt
	if newPassword && p.Auth.Type != project.AuthBasic {
		problems = append(problems, fmt.Errorf("a password is set only for basic authentication, and project %s uses %s", name, p.Auth.Type))
	}
	noPassword := p.Auth.Type == project.AuthBasic && p.Auth.Password.IsZero() && !newPassword
	if noPassword {
		problems = append(problems, errors.New("auth.password is empty: give one with --password-stdin or --password-prompt"))
	}
	newSecret := f.secretStdin || f.secretPrompt
	problems = append(problems, oauthProblems(p, newSecret)...)
	if err := checkProject(p, newPassword || noPassword, problems); err != nil {
		return err
	}
	if newPassword {
		pw, err := a.password(f.passwordStdin, fmt.Sprintf("New password of %s at %s: ", p.Auth.Username, p.Upstream.Host))
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		p.Auth.Password = pw
	}
	if newSecret {
		sec, err := a.clientSecret(f.secretStdin, p.Auth.OAuth.ClientID)
		if err != nil {
			return fmt.Errorf("%w; nothing was changed", err)
		}
		p.Auth.OAuth.ClientSecret = sec
	}
	// The date was the old secret's.
	dropped := newSecret && !fs.Changed("client-secret-expires") && !p.Auth.OAuth.ClientSecretExpires.IsZero()
	if dropped {
		p.Auth.OAuth.ClientSecretExpires = time.Time{}
	}
	v, err := st.PutProject(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("project %s was changed by someone else meanwhile; nothing was changed, run the command again", name)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "updated project %s (version %d)\n", name, v)
	if dropped {
		fmt.Fprintln(a.Stdout, "note: the old client secret's expiry date was dropped: give the new one's with --client-secret-expires")
	}
	// A sign-in follows a change of the OAuth settings, not of the secret's date.
	oauthChanged := false
	fs.Visit(func(fl *pflag.Flag) {
		oauthChanged = oauthChanged || (slices.Contains(oauthFlags, fl.Name) && fl.Name != "client-secret-expires")
	})
	if step := nextStep(p, cfg.SignInURL()); step != "" && (!wasOAuth || oauthChanged) {
		fmt.Fprintf(a.Stdout, "next: %s\n", step)
	}
	return nil
}

// checkProject validates p, together with the problems found earlier, and returns all of them as
// one error. When skipPassword is set (a password is still to be read, or its absence was
// reported already), an empty password is not reported.
func checkProject(p project.Project, skipPassword bool, found []error) error {
	check := p
	if skipPassword {
		check.Auth.Password = secret.New("to be read")
	}
	found = append(found, check.Validate()...)
	if len(found) == 0 {
		return nil
	}
	return &problems{intro: fmt.Sprintf("project %s is not valid; nothing was changed:", p.Name), errs: found}
}
