package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar"
	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
)

const authorizeAbout = `
Sign an OAuth project's mailbox in, or check an app-only registration. What happens depends on the
project's grant:

  authorization_code  print a sign-in link for the mailbox owner, as 'postern authorize-link' does
  device_code         sign in from this terminal (also with --device for an authorization_code
                      project whose app registration allows public client flows): open the address
                      shown, on any device, enter the code, and sign in as the mailbox
  client_credentials  fetch an app-only token once, to prove the app registration works

After a device sign-in Postern checks that the account that signed in is the project's mailbox
(another account is refused and nothing is saved) and saves the grant to the store.

A mailbox that signed in before must sign in again as the same account: its immutable id (oid or
sub) and its Microsoft tenant (tid) are kept with the grant, and another account with the same
address is refused. A project whose tenant is a domain, "organizations" or "common" is pinned to
the tenant of its first sign-in this way; a tenant id in the project pins it from the start. When
the mailbox's account was replaced on purpose, --forget drops the kept account first. Then, unless
--check=false, it signs in to the upstream mail server with the new token, without sending mail, and
says what to do if the server refuses.`

func (a *App) authorizeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "authorize PROJECT",
		Short:             "sign an OAuth project's mailbox in, or check an app-only registration",
		Long:              authorizeAbout,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	device := cmd.Flags().Bool("device", false, "sign in from this terminal with the device code grant")
	check := cmd.Flags().Bool("check", true, "sign in to the upstream mail server with the new token (no mail is sent)")
	ttl := cmd.Flags().Duration("ttl", 0, "how long a printed sign-in link works, `DURATION` (default: signin.link_ttl)")
	forget := cmd.Flags().Bool("forget", false, "forget the account of the previous sign-in, so that a replaced account can sign in")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		cfg, st, err := a.openConfigStore(ctx, load)
		if err != nil {
			return err
		}
		defer st.Close()
		p, err := oauthProject(ctx, st, args[0])
		if err != nil {
			return err
		}
		if *forget {
			if err := a.forgetAccount(ctx, st, p); err != nil {
				return err
			}
		}
		switch grant := p.Auth.OAuth.Grant; {
		case grant == oauth.GrantClientCredentials:
			if *device {
				return usageErrorf("project %s uses the client_credentials grant: no person signs in, so there is no device sign-in", p.Name)
			}
			return a.authorizeApp(ctx, cfg, st, p, *check)
		case *device || grant == oauth.GrantDeviceCode:
			return a.authorizeDevice(ctx, cfg, st, p, *check)
		}
		return a.printLink(cfg, p, *ttl)
	}
	return cmd
}

const authorizeLinkAbout = `
Print a sign-in link for the owner of an OAuth project's mailbox. The link opens Postern's sign-in
page on the admin listener (signin.public_url), which sends the owner to the identity provider's
login; once they have signed in as the project's mailbox, the grant is saved and mail flows.

The link is signed with the key in signin.key_file (created on first use), works once, and expires
after --ttl (default signin.link_ttl, 72h). Only the link goes to standard output:

  postern authorize-link client-a | mail -s "Please sign in" it@client.co.uk`

func (a *App) authorizeLinkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:               "authorize-link PROJECT",
		Short:             "print a sign-in link for the owner of an OAuth project's mailbox",
		Long:              authorizeLinkAbout,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeProjects,
	}
	load := a.configFlag(cmd)
	ttl := cmd.Flags().Duration("ttl", 0, "how long the link works, `DURATION` (default: signin.link_ttl)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg, st, err := a.openConfigStore(cmd.Context(), load)
		if err != nil {
			return err
		}
		defer st.Close()
		p, err := oauthProject(cmd.Context(), st, args[0])
		if err != nil {
			return err
		}
		return a.printLink(cfg, p, *ttl)
	}
	return cmd
}

// oauthProject reads the project called name and checks that it signs in with OAuth.
func oauthProject(ctx context.Context, st store.Admin, name string) (project.Project, error) {
	p, err := st.Project(ctx, name)
	if err != nil {
		return p, ExplainNotFound(err, name)
	}
	if p.Auth.Type != project.AuthOAuth2 || p.Auth.OAuth == nil {
		return p, fmt.Errorf("project %s signs in with %s, not OAuth: there is nothing to authorize (switch it with 'postern project update %s --auth oauth2 ...')",
			p.Name, p.Auth.Type, p.Name)
	}
	return p, nil
}

// printLink prints a sign-in link for p on standard output, and what to do with it on standard
// error.
func (a *App) printLink(cfg *config.Config, p project.Project, ttl time.Duration) error {
	if ttl == 0 {
		ttl = cfg.SignIn.LinkTTL
	}
	base := cfg.SignInURL()
	if base == "" {
		return errors.New("the sign-in pages are not served: the admin listener is off (listen.admin) and signin.public_url is not set")
	}
	if err := signin.Eligible(p); err != nil {
		return err
	}
	key, err := signin.LoadKey(cfg.SignIn.KeyFile)
	if err != nil {
		return err
	}
	links, err := signin.NewLinks(key, base)
	if err != nil {
		return err
	}
	u, link, err := links.New(p, ttl, time.Now())
	if err != nil {
		return fmt.Errorf("--ttl: %w", err)
	}
	fmt.Fprintln(a.Stdout, u)
	fmt.Fprintf(a.Stderr, "Send this link to the owner of the mailbox %s. It works once, until %s.\n", link.Mailbox, link.Expiry.Format(time.RFC1123))
	fmt.Fprintf(a.Stderr, "The app registration's redirect URI must be %s/signin/callback.\n", links.Base())
	return nil
}

// forgetAccount drops the account and tenant id of p's previous sign-in from its token record.
func (a *App) forgetAccount(ctx context.Context, st store.Tokens, p project.Project) error {
	for range 5 {
		rec, err := st.Token(ctx, p.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			fmt.Fprintf(a.Stderr, "project %s has no sign-in to forget\n", p.Name)
			return nil
		case err != nil:
			return fmt.Errorf("reading the token record of project %s: %w", p.Name, err)
		case rec.AccountID == "" && rec.TenantID == "":
			fmt.Fprintf(a.Stderr, "project %s keeps no account of a previous sign-in\n", p.Name)
			return nil
		}
		was := fmt.Sprintf("account %s, tenant %s", rec.AccountID, rec.TenantID)
		rec.AccountID, rec.TenantID = "", ""
		_, err = st.PutToken(ctx, p.Name, rec)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("writing the token record of project %s: %w", p.Name, err)
		}
		fmt.Fprintf(a.Stderr, "forgot the account of the previous sign-in of project %s (%s): the next sign-in of %s may be another account\n", p.Name, was, p.Auth.Username)
		return nil
	}
	return fmt.Errorf("the token record of project %s keeps changing: try again", p.Name)
}

// authorizeDevice signs p's mailbox in with the device code grant, from this terminal.
func (a *App) authorizeDevice(ctx context.Context, cfg *config.Config, st store.Store, p project.Project, check bool) error {
	prov, err := oauth.NewProvider(p.Auth.OAuth, oauth.Options{HTTPClient: sidecar.OAuthHTTPClient(cfg)})
	if err != nil {
		return fmt.Errorf("project %s: %v", p.Name, err)
	}
	da, err := prov.DeviceAuth(ctx)
	if err != nil {
		return fmt.Errorf("%s", explainOAuth(err))
	}
	mailbox := p.Auth.Username
	fmt.Fprintf(a.Stdout, "To sign in the mailbox %s for project %s:\n", mailbox, p.Name)
	fmt.Fprintf(a.Stdout, "  1. open %s in a browser, on any device\n", da.VerificationURI)
	fmt.Fprintf(a.Stdout, "  2. enter the code %s\n", da.UserCode)
	fmt.Fprintf(a.Stdout, "  3. sign in as %s and allow access\n", mailbox)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(a.Stdout, "(or open %s, which has the code filled in)\n", da.VerificationURIComplete)
	}
	if !da.Expiry.IsZero() {
		fmt.Fprintf(a.Stdout, "The code works until %s.\n", da.Expiry.Format(time.TimeOnly))
	}
	tok, err := prov.DeviceToken(ctx, da, func(ev oauth.DevicePoll) {
		if ev.Code == "slow_down" {
			fmt.Fprintf(a.Stdout, "waiting for sign-in... (attempt %d; asked to wait %s between attempts)\n", ev.Attempt, ev.Interval)
			return
		}
		fmt.Fprintf(a.Stdout, "waiting for sign-in... (attempt %d)\n", ev.Attempt)
	})
	if err != nil {
		return fmt.Errorf("no sign-in: %s; nothing was saved", explainOAuth(err))
	}
	id, err := prov.Identity(ctx, tok)
	if err != nil {
		return fmt.Errorf("could not verify which account signed in (the scopes must include openid and email): %v; nothing was saved", err)
	}
	account := id.Mailbox
	prev, err := st.Token(ctx, p.Name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("reading the token record of project %s: %v; nothing was saved", p.Name, err)
	}
	var ae *oauth.AccountError
	switch err := oauth.CheckAccount(id, mailbox, prev); {
	case errors.As(err, &ae) && ae.Kind != oauth.OtherMailbox:
		return fmt.Errorf("%v: nothing was saved. Sign in with the account used before; if the mailbox's account was replaced on purpose, "+
			"run 'postern authorize --forget %s' and sign in again", err, p.Name)
	case err != nil:
		return fmt.Errorf("%s signed in, but project %s sends as %s: nothing was saved. Run the command again and sign in as %s; "+
			"a token of another account is the classic cause of \"535 5.7.3 Authentication unsuccessful\"", account, p.Name, mailbox, mailbox)
	}
	parts := sidecar.NewParts(ctx, cfg, st, slog.New(slog.DiscardHandler))
	defer parts.Close()
	if err := parts.Broker.Store(ctx, p, tok, token.SignIn{Account: account, AccountID: id.ID, TenantID: id.TenantID}); err != nil {
		return fmt.Errorf("signed in as %s, but saving the grant failed: %v; nothing was saved, run the command again", account, err)
	}
	fmt.Fprintf(a.Stdout, "signed in as %s: the grant of project %s is saved\n", account, p.Name)
	return a.checkUpstream(ctx, parts, p, check)
}

// authorizeApp proves an app-only (client credentials) registration by fetching a token, and saves
// it, which also clears a needs_reauth state left by an earlier failure.
func (a *App) authorizeApp(ctx context.Context, cfg *config.Config, st store.Store, p project.Project, check bool) error {
	prov, err := oauth.NewProvider(p.Auth.OAuth, oauth.Options{HTTPClient: sidecar.OAuthHTTPClient(cfg)})
	if err != nil {
		return fmt.Errorf("project %s: %w", p.Name, err)
	}
	tok, err := prov.ClientCredentials(ctx)
	if err != nil {
		return fmt.Errorf("the identity provider refused the app of project %s: %s", p.Name, explainOAuth(err))
	}
	parts := sidecar.NewParts(ctx, cfg, st, slog.New(slog.DiscardHandler))
	defer parts.Close()
	if err := parts.Broker.Store(ctx, p, tok, token.SignIn{}); err != nil {
		return fmt.Errorf("the app registration works, but saving its token failed: %w", err)
	}
	fmt.Fprintf(a.Stdout, "the app registration of project %s works: the identity provider issued an app-only token (no person signs in)\n", p.Name)
	return a.checkUpstream(ctx, parts, p, check)
}

// explainOAuth is a token-endpoint failure in the provider's words, with what it means.
func explainOAuth(err error) string {
	reason := oauth.Reason(err)
	switch {
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case strings.HasPrefix(reason, "access_denied"):
		return "the sign-in was declined (" + reason + ")"
	case strings.HasPrefix(reason, "expired_token"):
		return "the code expired before anyone signed in: run the command again (" + reason + ")"
	}
	switch oauth.Classify(err) {
	case oauth.BadClient:
		return reason + " (check the client id, the client secret and the app registration)"
	case oauth.Transient:
		return reason + " (the identity provider could not be reached or had a problem: try again)"
	}
	return reason
}

// checkUpstream signs in to p's upstream with the credential creds now gives, without sending
// mail, and says what the server said.
func (a *App) checkUpstream(ctx context.Context, parts *sidecar.Parts, p project.Project, check bool) error {
	if !check {
		return nil
	}
	fmt.Fprintf(a.Stdout, "signing in to %s with the new token (no mail is sent)...\n", p.Upstream.Address())
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := parts.SignInCheck(ctx, p); err != nil {
		outro := fmt.Sprintf("The grant is saved; mail of project %s waits in Postfix's queue until this is fixed.", p.Name)
		if next := advice.Next(p, err); next != "" {
			outro = next + "\n" + outro
		}
		return &problems{errs: []error{fmt.Errorf("the mail server refused the sign-in: %w", err)}, outro: outro}
	}
	fmt.Fprintf(a.Stdout, "the mail server accepted the token: mail of project %s flows\n", p.Name)
	return nil
}
