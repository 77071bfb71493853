package admin

// The project API: what `postern project` does, over HTTP, for tools that manage many projects.
//
//  1. LoadAPIToken reads the bearer token from api.token_file, creating the file on first start.
//  2. Every request under /api/v1/projects/{name} must carry "Authorization: Bearer <token>",
//     compared in constant time; without the API configured these routes answer 404 saying how to
//     turn it on.
//  3. GET answers the project with its secrets as "[set]" or "[not set]". PUT takes the project in
//     the storage form (project.UnmarshalStored: unknown keys are errors), keeps the stored secrets
//     the body leaves out, checks everything at once, and writes with check-and-set. DELETE
//     removes it as `postern project remove` does (store.Remove: a tombstone keeps its queued mail
//     waiting), or with ?purge=true deletes it for good; POST .../enable and .../disable switch it.
//  4. Every answer is JSON; errors are {"error": ..., "problems": [...]} saying what to do next.
//     Each write is logged once; no secret reaches an answer or the log.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store"
)

// APIOptions turns the project API on: GET, PUT and DELETE /api/v1/projects/{name} and POST
// /api/v1/projects/{name}/enable and /disable. Both fields are required; without either the API
// stays off.
type APIOptions struct {
	// Store is where projects are read and written: the store `postern serve` opened.
	Store store.Admin
	// Token is the bearer token every request must carry (see LoadAPIToken).
	Token secret.Secret
}

// MaxAPIBodyBytes bounds the body of a PUT.
const MaxAPIBodyBytes = 1 << 20

// minAPITokenLen is the shortest token accepted from a token file written by hand.
const minAPITokenLen = 16

// apiWriteAttempts bounds the re-reads when a write without If-Match meets a concurrent change.
const apiWriteAttempts = 3

// redactionMarks are what GET shows in place of secrets; a PUT that sends one back is refused
// rather than storing it as the password.
var redactionMarks = []string{"[set]", "[not set]", "[redacted]"}

const apiOffMessage = "the project API is off: set api.token_file in Postern's configuration " +
	"(a file for the bearer token, created on start if missing) and restart Postern, or use 'postern project'"

type projectAPI struct {
	st    store.Admin
	token [sha256.Size]byte
	log   *slog.Logger
	// reader admits reads (GET, HEAD) with the read token too (Server.readAllowed).
	reader func(*http.Request) bool
}

// apiError is the body of every error answer.
type apiError struct {
	Error    string   `json:"error"`
	Problems []string `json:"problems"`
}

// routes adds the API's routes to mux; with api nil, routes that say how to turn the API on.
func (a *projectAPI) routes(mux *http.ServeMux) {
	if a == nil {
		off := func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, http.StatusNotFound, apiOffMessage)
		}
		mux.HandleFunc("/api/v1/projects/{name}", off)
		mux.HandleFunc("/api/v1/projects/{name}/{action}", off)
		return
	}
	mux.Handle("GET /api/v1/projects/{name}", a.auth(a.get))
	mux.Handle("PUT /api/v1/projects/{name}", a.auth(a.put))
	mux.Handle("DELETE /api/v1/projects/{name}", a.auth(a.delete))
	mux.Handle("POST /api/v1/projects/{name}/enable", a.auth(func(w http.ResponseWriter, r *http.Request) { a.setEnabled(w, r, true) }))
	mux.Handle("POST /api/v1/projects/{name}/disable", a.auth(func(w http.ResponseWriter, r *http.Request) { a.setEnabled(w, r, false) }))
	mux.Handle("/api/v1/projects/{name}", a.auth(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "GET, HEAD, PUT, DELETE")
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed here: use GET, PUT or DELETE", r.Method))
	}))
	mux.Handle("/api/v1/projects/{name}/{action}", a.auth(func(w http.ResponseWriter, r *http.Request) {
		if action := r.PathValue("action"); action == "enable" || action == "disable" {
			w.Header().Set("Allow", "POST")
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed here: use POST", r.Method))
			return
		}
		writeError(w, http.StatusNotFound, "no such action: use POST /api/v1/projects/{name}/enable or /disable")
	}))
}

// auth admits requests carrying the bearer token.
func (a *projectAPI) auth(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(got) == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="postern"`)
			writeError(w, http.StatusUnauthorized, "no bearer token: send the header \"Authorization: Bearer <token>\" with the content of api.token_file")
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		read := (r.Method == http.MethodGet || r.Method == http.MethodHead) && a.reader != nil && a.reader(r)
		if subtle.ConstantTimeCompare(sum[:], a.token[:]) != 1 && !read {
			a.log.Warn("project API: refused a wrong bearer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="postern", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "the bearer token is wrong: use the content of api.token_file")
			return
		}
		if name := r.PathValue("name"); !project.ValidName(name) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("project name %q: use 1-63 lower case letters, digits, '.', '-' or '_'", name))
			return
		}
		next(w, r)
	})
}

func (a *projectAPI) get(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, err := a.st.Project(r.Context(), name)
	if err != nil {
		a.readError(w, name, err)
		return
	}
	writeProject(w, http.StatusOK, p)
}

// put creates or replaces a project.
func (a *projectAPI) put(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	want, ok := ifMatch(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxAPIBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", MaxAPIBodyBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	in, bodyVersion, hasEnabled, err := decodeProject(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "the body is not a project in the stored JSON form: "+err.Error())
		return
	}
	if bodyVersion != 0 {
		if want != 0 && want != bodyVersion {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("If-Match asks for version %d but the body's version is %d: give one", want, bodyVersion))
			return
		}
		want = bodyVersion
	}
	var problems []error
	switch in.Name {
	case "":
		in.Name = name
	case name:
	default:
		problems = append(problems, fmt.Errorf("name %q in the body differs from %q in the path: the path names the project", in.Name, name))
		in.Name = name
	}
	problems = append(problems, markProblems(in)...)
	in.Senders, in.SendAs = project.NormalizeSenders(in.Senders), project.NormalizeSenders(in.SendAs)

	for attempt := 1; ; attempt++ {
		old, err := a.st.Project(r.Context(), name)
		exists := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			a.readError(w, name, err)
			return
		}
		if want != 0 && !checkVersion(w, name, old, exists, want) {
			return
		}
		p := merge(in, old, exists, hasEnabled)
		all, err := a.st.Projects(r.Context())
		if err != nil {
			a.storeError(w, fmt.Errorf("reading the projects: %w", err))
			return
		}
		invalid := append(append([]error(nil), problems...), check(p, old, exists)...)
		conflicts := project.SenderConflicts(p, all)
		if len(invalid)+len(conflicts) > 0 {
			code, msg := http.StatusUnprocessableEntity, fmt.Sprintf("project %s is not valid; nothing was changed: fix every problem and send it again", name)
			if len(invalid) == 0 {
				code, msg = http.StatusConflict, fmt.Sprintf("project %s shares senders with other projects; nothing was changed: remove them there first, or send other senders", name)
			}
			writeError(w, code, msg, append(invalid, conflicts...)...)
			return
		}
		v, err := a.st.PutProject(r.Context(), p)
		if errors.Is(err, store.ErrConflict) && want == 0 && attempt < apiWriteAttempts {
			continue
		}
		if errors.Is(err, store.ErrConflict) {
			writeError(w, http.StatusConflict, fmt.Sprintf("project %s was changed by someone else meanwhile; nothing was changed: GET it again, apply your change and send it with the new version", name))
			return
		}
		if err != nil {
			a.storeError(w, fmt.Errorf("writing project %s: %w", name, err))
			return
		}
		p.Version = v
		action, code := "update", http.StatusOK
		if !exists {
			action, code = "create", http.StatusCreated
			w.Header().Set("Location", "/api/v1/projects/"+name)
		}
		a.logWrite(r, name, action, v)
		writeProject(w, code, p)
		return
	}
}

func (a *projectAPI) delete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	want, ok := ifMatch(w, r)
	if !ok {
		return
	}
	old, err := a.st.Project(r.Context(), name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.readError(w, name, err)
		return
	}
	if want != 0 && !checkVersion(w, name, old, err == nil, want) {
		return
	}
	if purge, _ := strconv.ParseBool(r.URL.Query().Get("purge")); purge {
		if err := a.st.DeleteProject(r.Context(), name); err != nil {
			a.readError(w, name, err)
			return
		}
		a.logWrite(r, name, "purge", old.Version)
		writeJSON(w, http.StatusOK, map[string]any{"deleted": name, "version": old.Version})
		return
	}
	tokens, _ := a.st.(store.Tokens)
	tomb, err := store.Remove(r.Context(), a.st, tokens, name, time.Now())
	if err != nil {
		a.readError(w, name, err)
		return
	}
	a.logWrite(r, name, "remove", tomb.Version)
	writeJSON(w, http.StatusOK, map[string]any{"removed": name, "version": tomb.Version, "removed_at": tomb.Removed})
}

func (a *projectAPI) setEnabled(w http.ResponseWriter, r *http.Request, enabled bool) {
	name := r.PathValue("name")
	want, ok := ifMatch(w, r)
	if !ok {
		return
	}
	action := "disable"
	if enabled {
		action = "enable"
	}
	for attempt := 1; ; attempt++ {
		p, err := a.st.Project(r.Context(), name)
		if err != nil {
			a.readError(w, name, err)
			return
		}
		if want != 0 && !checkVersion(w, name, p, true, want) {
			return
		}
		if p.IsRemoved() {
			writeError(w, http.StatusConflict, fmt.Sprintf("project %s was removed: PUT it again, or DELETE it with ?purge=true", name))
			return
		}
		if p.Enabled == enabled {
			writeProject(w, http.StatusOK, p)
			return
		}
		p.Enabled = enabled
		v, err := a.st.PutProject(r.Context(), p)
		if errors.Is(err, store.ErrConflict) && want == 0 && attempt < apiWriteAttempts {
			continue
		}
		if errors.Is(err, store.ErrConflict) {
			writeError(w, http.StatusConflict, fmt.Sprintf("project %s was changed by someone else meanwhile; nothing was changed: try again", name))
			return
		}
		if err != nil {
			a.storeError(w, fmt.Errorf("writing project %s: %w", name, err))
			return
		}
		p.Version = v
		a.logWrite(r, name, action, v)
		writeProject(w, http.StatusOK, p)
		return
	}
}

func (a *projectAPI) logWrite(r *http.Request, name, action string, version int) {
	a.log.Info("project API: project written", "project", name, "action", action, "version", version, "remote", r.RemoteAddr)
}

// readError answers a failed read or delete of one project.
func (a *projectAPI) readError(w http.ResponseWriter, name string, err error) {
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no project named %s: create it with PUT /api/v1/projects/%s, or list them with GET /api/v1/projects", name, name))
		return
	}
	a.storeError(w, fmt.Errorf("project %s: %w", name, err))
}

// storeError answers a store that failed; nothing was changed, or the change is unknown.
func (a *projectAPI) storeError(w http.ResponseWriter, err error) {
	a.log.Error("project API: the store failed", "err", err)
	writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the store failed: %v; check Postern's log and the store, then try again", err))
}

// ifMatch returns the version an If-Match header asks for (0 when there is none), or answers 400.
// The version may be quoted, as an ETag is.
func ifMatch(w http.ResponseWriter, r *http.Request) (int, bool) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	if h == "" {
		return 0, true
	}
	v, err := strconv.Atoi(strings.Trim(strings.TrimPrefix(h, "W/"), `"`))
	if err != nil || v <= 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("If-Match %q: give the project's version, a number from GET (its \"version\" or ETag)", h))
		return 0, false
	}
	return v, true
}

// checkVersion answers 409 unless the stored project is at version want.
func checkVersion(w http.ResponseWriter, name string, old project.Project, exists bool, want int) bool {
	switch {
	case !exists:
		writeError(w, http.StatusConflict, fmt.Sprintf("project %s does not exist, but version %d was asked for: it was removed meanwhile; leave If-Match and version out to create it", name, want))
		return false
	case old.Version != want:
		writeError(w, http.StatusConflict, fmt.Sprintf("project %s is at version %d, not %d: someone changed it meanwhile; nothing was changed: GET it again, apply your change and send it with the new version", name, old.Version, want))
		return false
	}
	return true
}

// decodeProject decodes a PUT body: the stored form of a project, plus the "version" GET shows,
// which asks for a check-and-set. It reports whether "enabled" was given.
func decodeProject(body []byte) (p project.Project, version int, hasEnabled bool, err error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return p, 0, false, jsonProblem(err)
	}
	if fields == nil {
		return p, 0, false, errors.New("the body must be a JSON object")
	}
	if raw, ok := fields["version"]; ok {
		if err := json.Unmarshal(raw, &version); err != nil || version < 0 {
			return p, 0, false, errors.New(`"version" must be the project's version, a number from GET`)
		}
		delete(fields, "version")
	}
	_, hasEnabled = fields["enabled"]
	rest, err := json.Marshal(fields)
	if err != nil {
		return p, 0, false, err
	}
	p, err = project.UnmarshalStored(rest)
	if err != nil {
		return p, 0, false, jsonProblem(err)
	}
	return p, version, hasEnabled, nil
}

// jsonProblem describes a JSON decoding error without quoting the body, which may hold a secret.
func jsonProblem(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("not valid JSON (at byte %d)", syntax.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("%s: a JSON %s where %s belongs", fieldPath(typ.Field), typ.Value, typ.Type)
	}
	msg := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "decoding stored record: "), "json: ")
	if f, ok := strings.CutPrefix(msg, "unknown field "); ok {
		return fmt.Errorf("unknown key %s: check its spelling and where it sits (see a project from GET)", f)
	}
	return errors.New(msg)
}

// fieldPath is the JSON path of a decoding error's field, without the Go names of embedded types.
func fieldPath(field string) string {
	var keys []string
	for _, k := range strings.Split(field, ".") {
		if k != "" && !unicode.IsUpper(rune(k[0])) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return "the body"
	}
	return strings.Join(keys, ".")
}

// merge is the project to write: in, with what the body left out taken from the stored old one.
// Secrets left out are kept while they still fit: the password while the project stays basic
// with the same username, the client secret while it stays OAuth with the same provider and
// client id. "enabled" left out means enabled for a new project and unchanged for an old one.
func merge(in, old project.Project, exists, hasEnabled bool) project.Project {
	p := in
	if in.Auth.OAuth != nil {
		o := *in.Auth.OAuth
		p.Auth.OAuth = &o
	}
	p.Version = 0
	// A PUT writes a live project: over a tombstone, it adds the removed project again.
	p.Removed = time.Time{}
	if !hasEnabled {
		p.Enabled = !exists || old.Enabled || old.IsRemoved()
	}
	if !exists {
		return p
	}
	p.Version = old.Version
	if p.Auth.Type == project.AuthBasic && p.Auth.Password.IsZero() &&
		old.Auth.Type == project.AuthBasic && old.Auth.Username == p.Auth.Username {
		p.Auth.Password = old.Auth.Password
	}
	if o, oo := p.Auth.OAuth, old.Auth.OAuth; p.Auth.Type == project.AuthOAuth2 && o != nil && o.ClientSecret.IsZero() &&
		old.Auth.Type == project.AuthOAuth2 && oo != nil && oo.Provider == o.Provider && oo.ClientID == o.ClientID {
		o.ClientSecret = oo.ClientSecret
	}
	return p
}

// check returns every problem of the project to write, with hints for a missing password.
func check(p, old project.Project, exists bool) []error {
	var errs []error
	oauthSettingsBad := false
	for _, err := range p.Validate() {
		switch msg := err.Error(); {
		case msg == "auth.password is empty" && exists && old.Auth.Type == project.AuthBasic && old.Auth.Username != p.Auth.Username:
			err = fmt.Errorf("auth.password is empty: auth.username changed from %q, so send its password", old.Auth.Username)
		case msg == "auth.password is empty":
			err = errors.New("auth.password is empty: send the password in auth.password")
		case strings.HasPrefix(msg, "auth.oauth"):
			oauthSettingsBad = true
		}
		errs = append(errs, err)
	}
	if p.Auth.Type == project.AuthOAuth2 && p.Auth.OAuth != nil && !oauthSettingsBad {
		if _, err := oauth.NewProvider(p.Auth.OAuth, oauth.Options{}); err != nil {
			errs = append(errs, fmt.Errorf("auth.oauth: %w", err))
		}
	}
	if p.Auth.Type != project.AuthBasic && !p.Auth.Password.IsZero() {
		errs = append(errs, fmt.Errorf("auth.password is set, but a password is used only with auth.type basic, not %s: leave it out", p.Auth.Type))
	}
	return errs
}

// markProblems refuses the redaction marks of GET sent back as secrets.
func markProblems(p project.Project) []error {
	var errs []error
	isMark := func(s secret.Secret) bool {
		for _, m := range redactionMarks {
			if s.Reveal() == m {
				return true
			}
		}
		return false
	}
	if isMark(p.Auth.Password) {
		errs = append(errs, errors.New("auth.password holds what GET shows instead of the password: leave it out to keep the stored one, or send the password"))
	}
	if o := p.Auth.OAuth; o != nil && isMark(o.ClientSecret) {
		errs = append(errs, errors.New("auth.oauth.client_secret holds what GET shows instead of the secret: leave it out to keep the stored one, or send the secret"))
	}
	return errs
}

func writeProject(w http.ResponseWriter, code int, p project.Project) {
	obj, err := project.PublicMap(p)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encoding the project: "+err.Error())
		return
	}
	w.Header().Set("ETag", strconv.Quote(strconv.Itoa(p.Version)))
	writeJSON(w, code, obj)
}

func writeError(w http.ResponseWriter, code int, msg string, problems ...error) {
	e := apiError{Error: msg, Problems: make([]string, 0, len(problems))}
	for _, p := range problems {
		e.Problems = append(e.Problems, p.Error())
	}
	writeJSON(w, code, e)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// LoadAPIToken reads the API's bearer token from the file at path, as LoadToken does.
func LoadAPIToken(path string) (secret.Secret, error) { return LoadToken(path, "the API token file") }

// LoadToken reads a bearer token from the file at path (what names the file in errors),
// creating the file with a random token and mode 0600 when it does not exist. Concurrent creators
// agree on one token. A file readable by group or others is refused, as is a token shorter than 16
// characters. Created as root, the file is given to the owner of its directory.
func LoadToken(path, what string) (secret.Secret, error) {
	b, err := secret.LoadOrCreateFile(path, what, func() ([]byte, error) {
		raw := make([]byte, 32)
		_, err := rand.Read(raw)
		return []byte(base64.RawURLEncoding.EncodeToString(raw) + "\n"), err
	})
	if err != nil {
		return secret.Secret{}, err
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < minAPITokenLen || strings.ContainsAny(tok, " \t\r\n") {
		return secret.Secret{}, fmt.Errorf("%s %s must hold one token of at least %d characters without blanks: remove the file and restart to have one made", what, path, minAPITokenLen)
	}
	return secret.New(tok), nil
}
