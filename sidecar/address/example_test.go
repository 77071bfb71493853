package address_test

import (
	"fmt"

	"github.com/postern/postern/sidecar/address"
)

func ExamplePath() {
	// go-smtp's server passes `"john doe"@example.com` unquoted.
	for _, addr := range []string{
		"john.doe@example.com",
		"john doe@example.com",
		"a@evil.example> NOTIFY=NEVER@example.com",
		"",
		"nul\x00@example.com",
	} {
		p, err := address.Path(addr)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("RCPT TO:<%s>\n", p)
	}
	// Output:
	// RCPT TO:<john.doe@example.com>
	// RCPT TO:<"john doe"@example.com>
	// RCPT TO:<"a@evil.example> NOTIFY=NEVER"@example.com>
	// RCPT TO:<>
	// malformed address: the local part holds a control character
}
