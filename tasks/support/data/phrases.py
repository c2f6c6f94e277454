"""The phrases support tickets are built from: slot fillers, sentence templates per
category, details, context, and urgency cues (see ``generate.py`` for how they combine).

Changing anything here changes the generated datasets; regenerate them with
``python -m tasks.support.data.generate`` and commit the new files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

FEATURES: Final = (
    "dashboard", "reports page", "CSV export", "PDF export", "REST API", "webhooks",
    "SSO login", "SAML setup", "two-factor authentication", "mobile app", "Slack integration",
    "Jira integration", "Salesforce sync", "calendar sync", "search", "file uploads",
    "notifications", "email digests", "user permissions", "audit log", "team workspace",
    "kanban board", "time tracking", "analytics charts", "custom fields", "bulk import",
    "Zapier integration", "client portal", "comment threads", "project templates",
    "invoices page", "activity feed", "desktop app", "Gantt view", "form builder",
)
BILLING_PAGES: Final = (
    "invoices page", "billing settings page", "payment form", "subscription page",
    "receipt download", "seat management screen", "plan comparison page",
)
ACTIONS: Final = (
    "export a report", "upload a file larger than 10 MB", "invite a new teammate",
    "save a custom field", "log in with SSO", "sync my calendar", "open the dashboard",
    "filter by date range", "drag a card to another column", "connect the Slack integration",
    "download an invoice PDF", "reset my password", "run a bulk import", "search for a project",
    "archive a workspace", "duplicate a project template", "add a comment with an attachment",
    "change a user's role", "generate an API token", "edit a recurring task",
    "switch between workspaces", "print the Gantt view", "submit the form builder preview",
)
ERRORS: Final = (
    "500 Internal Server Error", "TypeError: Cannot read properties of undefined (reading 'id')",
    "ERR_CONNECTION_RESET", "Request timed out after 30s", "403 Forbidden",
    "java.lang.NullPointerException", "'NoneType' object has no attribute 'get'",
    "Something went wrong. Please try again later.", "502 Bad Gateway",
    "Error code E1042: sync failed", "Unexpected token < in JSON at position 0",
    "429 Too Many Requests", "SAML response signature invalid", "Upload failed (413)",
    "undefined is not a function", "Database error: deadlock detected",
)
HTTP_ERRORS: Final = ("500", "502", "404", "401", "403", "422", "504")
ENDPOINTS: Final = (
    "/v2/projects", "/v2/tasks/{id}", "/v1/users/me", "/v2/reports/export", "/v2/webhooks",
    "/v1/invoices", "/v2/comments", "/v2/search",
)
SYMPTOMS: Final = (
    "the page just shows a blank white screen", "the spinner never stops",
    "nothing happens when I click Save", "the numbers in the charts are wrong",
    "duplicate entries get created", "the layout is completely broken",
    "the app freezes for about a minute", "I get logged out immediately",
    "timestamps are shown in the wrong time zone", "attachments disappear after a refresh",
    "the webhook fires twice for every event", "notification emails arrive hours late",
    "exported files are empty", "the totals don't add up", "search returns no results",
    "the sidebar overlaps the content", "special characters turn into question marks",
    "some comments are shown under the wrong task", "the progress bar goes backwards",
)
PLATFORMS: Final = (
    "Chrome 126 on Windows 11", "Safari on macOS Sonoma", "Firefox 128", "the iOS app on iOS 17.5",
    "Android 14 on a Pixel 8", "Edge on Windows 10", "the desktop app on Windows",
    "the desktop app on macOS", "an iPad", "Chrome on a Chromebook", "our Linux CI runner",
)
FORMATS: Final = ("CSV", "Excel", "PDF", "JSON", "XML", "ICS")
CAPABILITIES: Final = (
    "export reports to Excel", "schedule reports to be emailed every Monday",
    "switch the interface to dark mode", "define custom roles with granular permissions",
    "bulk edit tasks", "filter the dashboard by custom fields",
    "work offline in the mobile app", "use keyboard shortcuts for everything",
    "attach files straight from Google Drive", "see the full change history of a record",
    "create recurring tasks", "white-label the client portal", "pin favourite projects",
    "archive old workspaces instead of deleting them", "configure webhooks per project",
    "set a default time zone per team", "export the audit log", "provision users with SCIM",
    "require hardware security keys for two-factor", "merge duplicate contacts",
    "add dependencies between tasks", "set budgets on projects", "translate the UI into Polish",
    "mention whole teams in comments", "lock a report so nobody can edit it",
    "copy a dashboard to another workspace", "restrict guests to a single project",
)
INTEGRATIONS: Final = (
    "Microsoft Teams", "Google Drive", "HubSpot", "Notion", "GitLab", "Linear", "Okta",
    "Outlook calendar", "Dropbox", "Intercom", "Power BI", "Tableau", "Asana",
)
COMPETITORS: Final = ("Asana", "Monday", "ClickUp", "Trello", "Wrike", "Smartsheet")
PLANS: Final = ("Starter", "Pro", "Business", "Enterprise", "Team")
MONTHS: Final = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
PAYMENT_ERRORS: Final = (
    "card_declined", "insufficient_funds", "Your card does not support this type of purchase",
    "3D Secure authentication failed", "expired_card", "Payment could not be processed",
    "do_not_honor", "processing_error",
)
HOWTOS: Final = (
    "add a new user to my workspace", "change the owner of a project", "rename my workspace",
    "change the language of the interface", "set up SSO with Azure AD", "export all of our data",
    "get started with the API", "change my login email address",
    "transfer a project to another team", "turn on notifications for mentions",
    "share a dashboard with a client", "set up a project template", "delete my account",
    "connect the Slack integration", "import tasks from a spreadsheet", "make someone an admin",
)
REGIONS: Final = ("EU", "US", "APAC", "UK")
NAMES: Final = (
    "Maria", "John", "Priya", "Chen", "Ahmed", "Sofia", "Lukas", "Emma", "Diego", "Yuki",
    "Fatima", "Tom", "Olga", "Kwame", "Aisha", "Ben", "Ines", "Raj",
)
COMPANIES: Final = (
    "Acme Corp", "Northwind", "Globex", "Initech", "Umbrella Health", "Bluebird Logistics",
    "Hooli", "Stark Retail", "Pied Piper", "Vandelay Industries", "Soylent Foods", "Wayne Media",
)
# fmt: on


CORE: Final[Mapping[str, tuple[str, ...]]] = {
    "bug": (
        'When I try to {action}, I get "{error}".',
        "The {feature} crashes on {platform} since we updated to {version}.",
        "The {feature} is broken: {symptom}.",
        "Steps to reproduce: 1) open the {feature} 2) {action} 3) {symptom}. "
        "Expected it to just work.",
        "After the {version} release, {symptom} in the {feature}.",
        "Getting {error} from the {feature} on {platform}.",
        "Something is wrong with the {feature} - {symptom}.",
        "I think there's a bug in the {feature}: {symptom}.",
        "The API returns {http_error} for {endpoint} even with a valid token.",
        'The {billing_page} shows "{error}" when I open it.',
        "Saving changes in the {feature} silently fails, nothing is stored after a reload.",
        "The {feature} stopped working on {platform}. The console shows: {error}",
        "Since {version}, exporting to {format} from the {feature} produces an empty file.",
        "SSO login loops back to the sign-in page on {platform}.",
        "Not sure if this is a bug or if I'm doing something wrong, but {symptom} when I {action}.",
        "The {feature} worked in {old_version} but in {version} {symptom}.",
        "Every time we {action} the {feature} throws {error}.",
        "The invoice totals on the {billing_page} are calculated wrong after {version}.",
        "Clicking the button to {action} does nothing on {platform}.",
        "{error} keeps popping up in the {feature}.",
    ),
    "feature_request": (
        "It would be great if we could {capability}.",
        "Feature request: please make it possible to {capability}.",
        "Are there any plans to support {integration}?",
        "Could you add an option to {capability}?",
        "We'd love to be able to {capability} in the {feature}.",
        "Suggestion: let admins {capability}.",
        "Any chance of a {integration} integration? We currently copy everything by hand.",
        "Please consider adding the ability to {capability}.",
        "Is it on the roadmap to {capability}? {competitor} already offers this.",
        "Our team keeps asking for a way to {capability}.",
        "It's not a bug, but the {feature} would be much more useful if we could {capability}.",
        "I'd like to vote for the ability to {capability}, it's the most requested thing "
        "in our company.",
        "Idea: {capability} directly from the {feature}.",
        "The {feature} is missing a way to {capability}.",
        "Would you consider supporting {format} export in the {feature}?",
        "We are moving from {competitor} and really miss being able to {capability}.",
        "Can the {feature} get an integration with {integration} in a future version?",
        "Wishlist item: {capability}.",
        "Would be really handy to {capability} - we'd use it daily.",
    ),
    "billing": (
        "I was charged {amount} twice this month for the {plan} plan.",
        "Can you send me an invoice for {month} with our VAT number {vat}?",
        "How do I upgrade from {plan} to {plan2}?",
        'Our credit card payment was declined with "{payment_error}".',
        "Please refund the {amount} charge from {date}, we cancelled before the renewal.",
        "I'd like to downgrade to the {plan2} plan at the end of the billing period.",
        "Why did our bill go up to {amount}? We didn't add any seats.",
        "We need to update the billing address on invoice {invoice_no}.",
        "How is proration calculated if we add {seats} seats mid-cycle?",
        "Please cancel our subscription and confirm there will be no further charges.",
        "Can we switch from monthly to annual billing and get the discount?",
        "The receipt for {invoice_no} shows the wrong company name.",
        "We were billed for {seats} seats but only have {seats2} active users.",
        "Do you accept payment by bank transfer or purchase order?",
        "Our trial ended and we were charged {amount} without any warning.",
        'I got the error "{payment_error}" when updating the card in the {billing_page}.',
        "Our {plan} subscription renewed at {amount} instead of the price we were quoted.",
        "Could you split the {month} invoice between two cost centres?",
        "We paid invoice {invoice_no} by wire on {date} but it still shows as unpaid.",
        "Is there a discount for non-profits or education on the {plan} plan?",
    ),
    "general": (
        "How do I {howto}?",
        "Is there a way to {capability}?",
        "Where can I find documentation about the {feature}?",
        "Do you have a status page I can subscribe to?",
        "What are your support hours for the {region} region?",
        "Is our data stored in the EU? Our legal team is asking about GDPR.",
        "Can I get a demo of the {feature} for my team?",
        "Just wanted to say thanks, the {feature} has made our life much easier.",
        "Who is the right person to talk to about a partnership?",
        "Can you point me to the API rate limits?",
        "What's the difference between the {plan} and {plan2} plans?",
        "How do I add {seats} new users to my workspace?",
        "Do you have a SOC 2 report we could review?",
        "Is there a training webinar for new admins?",
        "Can I change the owner of our workspace to {name}?",
        "Our admin left the company, how do we get access to the settings?",
        "Is the {feature} available in the mobile app as well?",
        "Quick question about the {feature}: does it respect user permissions?",
        "Can you explain how the {feature} and the {feature2} work together?",
        "We're evaluating the product for {company}, do you offer onboarding help?",
    ),
}

# Core sentences that fit several categories; the ticket keeps the label it was drawn with.
AMBIGUOUS_CORE: Final[tuple[tuple[frozenset[str], str], ...]] = (
    (frozenset({"bug", "general"}), "I can't figure out how to {action}, is something broken?"),
    (frozenset({"bug", "general"}), "The {feature} behaves differently than the docs describe."),
    (frozenset({"bug", "general"}), "Is it expected that {symptom} in the {feature}?"),
    (frozenset({"bug", "feature_request"}), "The {feature} doesn't let me {capability}."),
    (
        frozenset({"bug", "feature_request"}),
        "The {feature} should really {capability}, it feels broken without it.",
    ),
    (frozenset({"feature_request", "general"}), "Can the {feature} {capability}?"),
    (frozenset({"feature_request", "general"}), "Does the {feature} support {integration}?"),
    (frozenset({"billing", "general"}), "What would the {plan2} plan cost for {seats} users?"),
    (frozenset({"billing", "general"}), "Who on our side can see invoices and change the plan?"),
    (frozenset({"bug", "billing"}), "The {billing_page} took {amount} but shows our old plan."),
    (
        frozenset({"bug", "billing"}),
        "We were charged {amount} again after the {billing_page} showed an error.",
    ),
    (
        frozenset({"billing", "feature_request"}),
        "Could you offer a {plan2} plan billed per active user instead of per seat?",
    ),
)

DETAILS: Final[Mapping[str, tuple[str, ...]]] = {
    "bug": (
        "I've tried clearing the cache and a different browser.",
        "Screenshot attached.",
        "Request ID: {req_id}.",
        "Same thing happens on {platform}.",
        "It worked fine in {old_version}.",
        "Reproducible every time.",
        "Logs attached, let me know if you need more.",
        "Other colleagues see it too.",
        "We're on {version}.",
    ),
    "feature_request": (
        "That would save us hours every week.",
        "Happy to jump on a call to explain our use case.",
        "We'd even pay extra for this on the {plan} plan.",
        "Right now we use a spreadsheet as a workaround.",
        "Several teammates upvoted this in your community forum.",
        "Other tools we use already do this.",
        "It would make the {feature} much more useful for managers.",
    ),
    "billing": (
        "Our finance team needs this for the audit.",
        "Invoice number is {invoice_no}.",
        "Account email: {email}.",
        "The card on file ends in {seats2}.",
        "We've been on the {plan} plan since {year}.",
        "Please reply with the corrected amount.",
    ),
    "general": (
        "I couldn't find it in the help center.",
        "We're evaluating the product for {company}.",
        "Thanks in advance!",
        "A link to the docs would be enough.",
        "We're on the {plan} plan if that matters.",
    ),
}

# Details any customer might add, whatever they are writing about.
SHARED_DETAILS: Final = (
    "Screenshot attached.",
    "Account email: {email}.",
    "Happy to jump on a call if that helps.",
    "We're on {version} of the desktop app.",
    "My manager {name} is in cc.",
    "Let me know if you need anything else from me.",
)

# Category-neutral context that blurs the lines between classes.
CONTEXT: Final = (
    "We're on the {plan} plan with {seats} seats.",
    "We've been customers since {year} and generally love the product.",
    "By the way, the new {feature2} looks great.",
    "Separately, the invoice for {month} hasn't arrived yet, but that's another topic.",
    "The bug with the {feature2} last month was fixed quickly, thanks for that.",
    "My colleague suggested I write in about this.",
    "Our admin is {name}, feel free to cc them.",
    "We mostly use the app on {platform}.",
    "I checked the docs and the status page first.",
    "It would also be nice to {capability} at some point.",
    "Our account is under {email}.",
    "We're planning to add more seats next quarter.",
)

# Cues that read naturally in any kind of ticket.
URGENCY_CUES: Final[Mapping[str, tuple[str, ...]]] = {
    "critical": (
        "Please escalate immediately, this is an emergency.",
        "This is critical for the whole company, please call me back right away.",
        "Please treat this as P1.",
        "Our entire organisation is affected by this.",
        "We need someone on this right now, it affects all users.",
    ),
    "high": (
        "Please look at this as soon as possible, we have a deadline on Friday.",
        "We need this resolved today if at all possible.",
        "I've already contacted you twice about this without a reply.",
        "It's pretty urgent for us, a quick reply would be appreciated.",
        "This is blocking our rollout to the rest of the company.",
        "Management has been asking me about this since yesterday.",
    ),
    "medium": (
        "Would appreciate an answer sometime this week.",
        "A reply in the next few days would be great.",
        "Not critical, but we'd like it sorted before the end of the month.",
        "We can live with it for now, but please look into it.",
        "It's a bit inconvenient for a few of our users.",
    ),
    "low": (
        "Whenever you have time, no rush at all.",
        "Not urgent, just curious.",
        "No hurry on this one.",
        "Feel free to get to this whenever.",
        "Nothing pressing, take your time.",
        "No need to reply quickly.",
        "Low priority, just wanted to mention it.",
    ),
}

# Cues that only make sense in a ticket of one category.
CATEGORY_URGENCY_CUES: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    ("bug", "critical"): (
        "This is a full outage for us, nobody in the company can log in.",
        "All {n_users} users are affected and production is down.",
        "We are losing data: records created today have vanished.",
        "This looks like a security issue, I can see another customer's data.",
        "Our whole company is blocked and customers are complaining right now.",
        "This is causing data loss in production.",
        "We have a go-live in {hours} hours and everything is stuck.",
        "Since the {version} deploy our entire workspace is inaccessible.",
        "The {feature} is deleting records, we've lost a week of work.",
        "Customers' private files are visible to other accounts.",
    ),
    ("bug", "high"): (
        "This started since yesterday and is blocking my work.",
        "Several people on my team have been hitting this since this morning.",
        "A number of our clients have noticed and are asking questions.",
        "Half of the team can't continue until this is sorted.",
        "It has been like this since yesterday and it's getting worse.",
        "It's breaking the {feature} for a lot of our people since yesterday.",
        "We can't close month-end until the {feature} works again.",
    ),
    ("bug", "medium"): (
        "It's not blocking us but it's quite annoying.",
        "There's a workaround, but it costs us some time every day.",
        "It happens intermittently, maybe a few times a week.",
        "Only one of our users is affected so far.",
        "It's been like this for a couple of days.",
        "Refreshing the page usually fixes it for a while.",
        "It only happens on {platform}, other browsers are fine.",
    ),
    ("bug", "low"): (
        "This is only a minor cosmetic thing.",
        "It's only a typo in a label, really.",
        "Purely visual, everything still works.",
        "Low priority, just wanted to flag it.",
        "It's a small annoyance, nothing more.",
    ),
    ("feature_request", "critical"): (
        "Without this our compliance audit fails on Friday and we lose the contract.",
        "Our security team says we must stop using the product today unless this exists.",
        "All {n_users} users are exposed to a security risk until this is possible.",
        "We will have to cancel for the whole company this week without it.",
    ),
    ("feature_request", "high"): (
        "This is a blocker for our renewal next month.",
        "Our sales team needs this before the quarter closes.",
        "Several of our biggest clients have been asking for this since yesterday's demo.",
        "We need at least a timeline as soon as possible.",
    ),
    ("feature_request", "medium"): (
        "It would help us quite a bit over the next few weeks.",
        "It came up again in our planning meeting this week.",
        "There's a workaround, but it costs us some time every day.",
        "It's not blocking us but it would be a real improvement.",
    ),
    ("feature_request", "low"): (
        "Just a nice-to-have, no pressure.",
        "Maybe something for next year's roadmap.",
        "Just a small thought for the future.",
        "Only a minor idea, ignore it if it doesn't fit.",
    ),
    ("billing", "critical"): (
        "Our account was suspended by mistake and {n_users} people can't work.",
        "You charged us dozens of times, our bank account is overdrawn.",
        "Service was cut off today even though the invoice is paid, all users are locked out.",
        "Someone used our account to buy {seats} seats, this looks like fraud.",
        "Our whole workspace is read-only since the payment failed, production work has stopped.",
    ),
    ("billing", "high"): (
        "Our renewal is due tomorrow and the card keeps failing.",
        "Finance needs the corrected invoice by end of day.",
        "This has been going on since yesterday and our accountant is waiting.",
        "We'll lose access on Monday if this isn't sorted.",
    ),
    ("billing", "medium"): (
        "We'd like this fixed before the next billing cycle.",
        "It's not a huge amount, but we need the books to match.",
        "It's been like this for a couple of days.",
        "Only one of our cost centres is affected so far.",
    ),
    ("billing", "low"): (
        "No rush, it's just for our records.",
        "Whenever is convenient, the next invoice is weeks away.",
        "It's a small difference, nothing more.",
        "Just tidying up our records.",
    ),
    ("general", "critical"): (
        "I think our account has been compromised, someone changed the admin email.",
        "We got a phishing email that looks like it came from you, is our data exposed?",
        "We must delete a user's personal data today because of a legal request.",
        "An ex-employee still has access to all our projects, we suspect a data leak.",
    ),
    ("general", "high"): (
        "Our onboarding session with {seats} new users is tomorrow morning.",
        "Legal needs an answer by tomorrow before we can sign.",
        "Our procurement deadline is tomorrow.",
        "I've been stuck on this since yesterday.",
    ),
    ("general", "medium"): (
        "We're planning the rollout for next month.",
        "An answer this week would help our planning.",
        "A few of our users have asked me the same thing.",
    ),
    ("general", "low"): (
        "Just curious, nothing depends on it.",
        "Asking for future reference, thanks!",
        "Just wondering for future reference.",
        "Only a small question.",
    ),
}

SUBJECTS: Final[Mapping[str, tuple[str, ...]]] = {
    "bug": ("{feature} not working", "Error in {feature}", "Bug report", "Problem with {feature}"),
    "feature_request": ("Feature idea", "Suggestion for {feature}", "Request: {integration}"),
    "billing": ("Invoice question", "Billing issue", "Charge on our card", "Subscription change"),
    "general": ("Question", "Quick question about {feature}", "Help needed", "Info request"),
}
# fmt: off
GREETINGS: Final = (
    "Hi team,", "Hello,", "Hey,", "Hi there,", "Dear support,", "Hi {agent},", "Good morning,",
)
CLOSINGS: Final = (
    "Thanks!", "Thanks in advance.", "Cheers,", "Best regards,", "Thank you,", "Thx",
)
SIGNOFF_SUFFIXES: Final = ("", "", " from {company}", "\n-- Sent from my iPhone")
ABBREVIATIONS: Final = (
    ("please", "pls"), ("thanks", "thx"), ("you", "u"), ("because", "bc"),
    ("as soon as possible", "asap"),
)
# fmt: on

# --------------------------------------------------------------------------- assembly
