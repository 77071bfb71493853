package harness

// A headless Chromium for the sign-in page tests, driven over the DevTools protocol (chromedp):
//
//  1. StartBrowser finds Debian's Chromium (integration/oauth/install.sh --chromium installs it),
//     starts it headless with a profile of its own in a temporary directory, without background
//     networking, and stops it when the test ends.
//  2. Browser.SignIn opens a Postern sign-in link in a new browser context (a private window:
//     no cookies from an earlier sign-in), presses #signin, fills the identity provider's sign-in
//     form, allows the consent form, and returns the Postern page the browser ends on: its
//     #page[data-outcome] and the texts of #project, #mailbox, #account, #detail and #advice.
//
// Every page is recognised by what it carries, not by timing: Postern's pages by #page, the
// IdP's by #login-form and #consent-form. A page is acted on once: the browser marks each
// document it has read, so an old page still showing while the next one loads is not read twice.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/postern/postern/sidecar/secret"
)

// ChromiumPaths are where Debian's Chromium may be, tried in order: the real binary first (the
// /usr/bin/chromium wrapper only adds flags from /etc/chromium.d).
var ChromiumPaths = []string{"/usr/lib/chromium/chromium", "chromium", "chromium-browser"}

// FindChromium returns the path of the Chromium binary, or an error naming the install script.
func FindChromium() (string, error) {
	if p := os.Getenv("POSTERN_CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range ChromiumPaths {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium is not installed (run integration/oauth/install.sh --chromium as root)")
}

// RequireChromium fails t at once, naming `make deps`, when Chromium is missing; with
// POSTERN_IT_SKIP=1 it skips instead (t must then have a Skipf method, as *testing.T does).
func RequireChromium(t T) string {
	t.Helper()
	if !requirePrereqs(t, SkipEnv, checkChromium) {
		return ""
	}
	p, err := FindChromium()
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}

// BrowserOptions configure StartBrowser. The zero value finds Chromium with FindChromium.
type BrowserOptions struct {
	// Path is the Chromium binary; empty means FindChromium.
	Path string
	// StartTimeout bounds the start; zero means 60 s.
	StartTimeout time.Duration
}

// Browser is a running headless Chromium.
type Browser struct {
	t       T
	ctx     context.Context // the browser's first tab; new contexts derive from it
	cancel  context.CancelFunc
	stopped sync.Once
}

// StartBrowser starts headless Chromium with a temporary profile and stops it when the test ends.
func StartBrowser(t T, opts BrowserOptions) *Browser {
	t.Helper()
	started := time.Now()
	if opts.Path == "" {
		opts.Path = RequireChromium(t)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	dir, err := os.MkdirTemp("", "postern-chromium-")
	if err != nil {
		t.Fatalf("creating the Chromium profile dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	flags := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(opts.Path),
		chromedp.UserDataDir(dir),
		chromedp.NoSandbox, // the tests run as root
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("password-store", "basic"),
	)
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(), flags...)
	ctx, tabCancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(func(string, ...any) {}))
	b := &Browser{t: t, ctx: ctx, cancel: func() { tabCancel(); allocCancel() }}
	t.Cleanup(b.Stop)

	// The first action starts the browser, which lives as long as the context of that action: so
	// it runs on the browser's own context, with a timer as the bound.
	timer := time.AfterFunc(opts.StartTimeout, b.cancel)
	defer timer.Stop()
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting Chromium (%s): %v", opts.Path, err)
	}
	t.Logf("Chromium %s started in %s", opts.Path, time.Since(started).Round(time.Millisecond))
	return b
}

// Stop ends Chromium. Safe to call more than once.
func (b *Browser) Stop() {
	b.stopped.Do(func() {
		_ = chromedp.Cancel(b.ctx)
		b.cancel()
	})
}

// NewTab opens a tab in a browser context of its own (no cookies shared with other tabs);
// close it with the returned function.
func (b *Browser) NewTab() (context.Context, context.CancelFunc) {
	return chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
}

// BrowserSignIn is what the person in front of the browser does.
type BrowserSignIn struct {
	// Login and Password are typed into the identity provider's sign-in form (replacing the
	// login_hint it shows).
	Login    string
	Password secret.Secret
	// Timeout bounds the whole sign-in; zero means 60 s.
	Timeout time.Duration
}

// SignInPage is the Postern page a sign-in ended on.
type SignInPage struct {
	// Outcome is #page's data-outcome (signin.Outcome*).
	Outcome string
	// Title, Project, Mailbox, Account, Detail and Advice are the texts of #title, #project,
	// #mailbox, #account, #detail and #advice ("" when the page has none).
	Title, Project, Mailbox, Account, Detail, Advice string
	// Path is the page's URL path (the query, which holds the link or the code, is left out).
	Path string
	// Steps are the pages passed on the way: "postern:landing", "idp:login", "idp:consent", ...
	Steps []string
}

// browserPage is what the page reader script returns.
type browserPage struct {
	Kind    string `json:"kind"` // postern, login, consent, or "" for a page of neither
	Outcome string `json:"outcome"`
	Title   string `json:"title"`
	Project string `json:"project"`
	Mailbox string `json:"mailbox"`
	Account string `json:"account"`
	Detail  string `json:"detail"`
	Advice  string `json:"advice"`
	Error   string `json:"error"`
	URL     string `json:"url"`
	Text    string `json:"text"`
}

// browserReadPage reads a loaded document once: null while it is loading or after it was read.
const browserReadPage = `(() => {
  if (document.readyState !== 'complete' || window.__posternRead) return null;
  window.__posternRead = true;
  const text = s => { const e = document.querySelector(s); return e ? e.textContent.trim() : ''; };
  const page = document.querySelector('#page[data-outcome]');
  let kind = '';
  if (page) kind = 'postern';
  else if (document.querySelector('#login-form')) kind = 'login';
  else if (document.querySelector('#consent-form')) kind = 'consent';
  return {kind, outcome: page ? page.dataset.outcome : '', title: text('#title'), project: text('#project'),
    mailbox: text('#mailbox'), account: text('#account'), detail: text('#detail'), advice: text('#advice'),
    error: text('#error'), url: location.href, text: document.body ? document.body.innerText.slice(0, 1000) : ''};
})()`

// SignIn opens link in a new browser context and goes through the sign-in as a person would: the
// landing page's #signin button, the identity provider's sign-in form (opts.Login, opts.Password)
// and its consent form. It returns the first Postern page other than the landing page. An error
// means the browser did not get there (a page it did not expect, a refused password, a hang).
func (b *Browser) SignIn(ctx context.Context, link string, opts BrowserSignIn) (SignInPage, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	tab, closeTab := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	defer closeTab()
	tab, cancel := context.WithTimeout(tab, opts.Timeout)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()

	var out SignInPage
	if err := chromedp.Do(tab, chromedp.Navigate(link)); err != nil {
		return out, fmt.Errorf("opening the sign-in link: %w", err)
	}
	loggedIn := false
	for range 10 {
		pg, err := browserNextPage(tab)
		if err != nil {
			return out, fmt.Errorf("after %v: %w", out.Steps, err)
		}
		switch pg.Kind {
		case "postern":
			out.Steps = append(out.Steps, "postern:"+pg.Outcome)
			if pg.Outcome != "landing" {
				out.Outcome, out.Title, out.Project, out.Mailbox = pg.Outcome, pg.Title, pg.Project, pg.Mailbox
				out.Account, out.Detail, out.Advice = pg.Account, pg.Detail, pg.Advice
				if u, err := url.Parse(pg.URL); err == nil {
					out.Path = u.Path
				}
				return out, nil
			}
			err = chromedp.Do(tab, chromedp.Click(chromedp.CSS("#signin")))
		case "login":
			out.Steps = append(out.Steps, "idp:login")
			if loggedIn {
				return out, fmt.Errorf("the identity provider refused the sign-in of %s: %s", opts.Login, pg.Error)
			}
			loggedIn = true
			err = chromedp.Do(tab,
				chromedp.Evaluate[chromedp.Void](`document.querySelector('#login').value = ''`),
				chromedp.SendKeys(chromedp.CSS("#login"), opts.Login),
				chromedp.SendKeys(chromedp.CSS("#password"), opts.Password.Reveal()),
				chromedp.Click(chromedp.CSS("#login-form #submit")),
			)
		case "consent":
			out.Steps = append(out.Steps, "idp:consent")
			err = chromedp.Do(tab, chromedp.Click(chromedp.CSS("#consent-form #submit")))
		default:
			return out, fmt.Errorf("after %v: the browser shows an unexpected page (path %s): %q", out.Steps, browserPath(pg.URL), pg.Text)
		}
		if err != nil {
			return out, fmt.Errorf("after %v: %w", out.Steps, err)
		}
	}
	return out, fmt.Errorf("the sign-in did not end after %v", out.Steps)
}

// browserNextPage waits until a document the browser has not read yet has loaded, and reads it.
// Errors while a navigation replaces the document are retried until the tab's context ends.
func browserNextPage(tab context.Context) (browserPage, error) {
	var last error
	for {
		pg, err := chromedp.Run(tab, chromedp.Evaluate[*browserPage](browserReadPage))
		switch {
		case err == nil && pg != nil:
			return *pg, nil
		case err != nil:
			last = err
		}
		select {
		case <-tab.Done():
			if last != nil {
				return browserPage{}, fmt.Errorf("waiting for the next page: %w (last error: %v)", tab.Err(), last)
			}
			return browserPage{}, fmt.Errorf("waiting for the next page: %w", tab.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func browserPath(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(u.Host + u.Path)
}
