package oauth_test

import (
	"fmt"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
)

func ExampleProvider_AuthCodeURL() {
	p, err := oauth.NewProvider(&project.OAuth{Provider: "google", ClientID: "client-1"},
		oauth.Options{RedirectURL: "https://postern.example/callback"})
	if err != nil {
		panic(err)
	}
	// Use oauth.NewState and oauth.NewVerifier for real; fixed here for a stable output.
	fmt.Println(p.AuthCodeURL("state-1", "verifier-0123456789-0123456789-0123456789-0123"))
	// Output: https://accounts.google.com/o/oauth2/auth?access_type=offline&client_id=client-1&code_challenge=KcPsqJ7A-4ssKR_7sK9FKAZW8RqplR7EsDBJVBUcz44&code_challenge_method=S256&prompt=consent&redirect_uri=https%3A%2F%2Fpostern.example%2Fcallback&response_type=code&scope=https%3A%2F%2Fmail.google.com%2F+openid+email&state=state-1
}
