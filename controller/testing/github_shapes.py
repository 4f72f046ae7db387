"""The JSON objects :class:`~controller.testing.github.FakeGitHub` answers with.

Owns :class:`GitHubShapes`, the fake's builders of GitHub's response objects from its
state -- users, repositories, issue comments (with their reaction rollup), pull requests
(simple and full), commit statuses, git refs and content entries -- carrying every field
the response schemas of ``github-rest-subset.json`` require. A base class of the fake; its
routes call the builders through :attr:`RouteRequest.fake
<controller.testing.github_routes.RouteRequest.fake>`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from controller.testing.github_repo import (
    REACTIONS,
    FakeComment,
    FakePull,
    FakeRepo,
    blob_sha,
    iso_time,
)

__all__ = ["GitHubShapes"]


class GitHubShapes:
    """GitHub's response objects, built by the fake that serves them (:attr:`url` is its
    API root, :attr:`root` its own root for ``html_url``s, :attr:`login` the token's user)."""

    login: str
    clock: Callable[[], float]
    rate_limit: int  # the rate-limit window: its size, what was used, when it resets
    rate_used: int
    rate_reset: int
    _user_ids: dict[str, int]

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def root(self) -> str:
        raise NotImplementedError

    def _user_id(self, login: str) -> int:
        return self._user_ids.setdefault(login.lower(), 100 + len(self._user_ids))

    def user(self, login: str) -> dict[str, Any]:
        api = f"{self.url}/users/{login}"
        uid = self._user_id(login)
        return {
            "login": login,
            "id": uid,
            "node_id": f"U_{uid}",
            "avatar_url": f"{self.root}/avatars/u/{uid}",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.root}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": "Bot" if login.endswith("[bot]") or login == self.login else "User",
            "site_admin": False,
        }

    def minimal_repository(self, repo: FakeRepo) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        names = {
            "archive_url": "/{archive_format}{/ref}",
            "assignees_url": "/assignees{/user}",
            "blobs_url": "/git/blobs{/sha}",
            "branches_url": "/branches{/branch}",
            "collaborators_url": "/collaborators{/collaborator}",
            "comments_url": "/comments{/number}",
            "commits_url": "/commits{/sha}",
            "compare_url": "/compare/{base}...{head}",
            "contents_url": "/contents/{+path}",
            "contributors_url": "/contributors",
            "deployments_url": "/deployments",
            "downloads_url": "/downloads",
            "events_url": "/events",
            "forks_url": "/forks",
            "git_commits_url": "/git/commits{/sha}",
            "git_refs_url": "/git/refs{/sha}",
            "git_tags_url": "/git/tags{/sha}",
            "hooks_url": "/hooks",
            "issue_comment_url": "/issues/comments{/number}",
            "issue_events_url": "/issues/events{/number}",
            "issues_url": "/issues{/number}",
            "keys_url": "/keys{/key_id}",
            "labels_url": "/labels{/name}",
            "languages_url": "/languages",
            "merges_url": "/merges",
            "milestones_url": "/milestones{/number}",
            "notifications_url": "/notifications{?since,all,participating}",
            "pulls_url": "/pulls{/number}",
            "releases_url": "/releases{/id}",
            "stargazers_url": "/stargazers",
            "statuses_url": "/statuses/{sha}",
            "subscribers_url": "/subscribers",
            "subscription_url": "/subscription",
            "tags_url": "/tags",
            "teams_url": "/teams",
            "trees_url": "/git/trees{/sha}",
        }
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.full_name.split("/")[1],
            "full_name": repo.full_name,
            "owner": self.user(repo.owner),
            "private": True,
            "html_url": f"{self.root}/{repo.full_name}",
            "description": None,
            "fork": False,
            "url": api,
            **{key: api + suffix for key, suffix in names.items()},
        }

    def repository(self, repo: FakeRepo) -> dict[str, Any]:
        html = f"{self.root}/{repo.full_name}"
        created = iso_time(min((c.date for c in repo.commits.values()), default=0.0))
        return {
            **self.minimal_repository(repo),
            "clone_url": f"{html}.git",
            "git_url": f"git://{html.split('://', 1)[1]}.git",
            "ssh_url": f"git@{urlsplit(html).netloc}:{repo.full_name}.git",
            "svn_url": html,
            "mirror_url": None,
            "homepage": None,
            "language": None,
            "license": None,
            "default_branch": repo.default_branch,
            "forks": 0,
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers": 0,
            "watchers_count": 0,
            "size": 1,
            "open_issues": len(repo.issues) + sum(p.state == "open" for p in repo.pulls.values()),
            "open_issues_count": len(repo.issues)
            + sum(p.state == "open" for p in repo.pulls.values()),
            "has_issues": True,
            "has_projects": False,
            "has_wiki": False,
            "has_pages": False,
            "has_downloads": True,
            "archived": False,
            "disabled": False,
            "pushed_at": created,
            "created_at": created,
            "updated_at": created,
        }

    def issue_comment(self, repo: FakeRepo, comment: FakeComment) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        kind = "pull" if comment.issue in repo.pulls else "issues"
        return {
            "id": comment.id,
            "node_id": f"IC_{comment.id}",
            "url": f"{api}/issues/comments/{comment.id}",
            "html_url": (
                f"{self.root}/{repo.full_name}/{kind}/{comment.issue}#issuecomment-{comment.id}"
            ),
            "issue_url": f"{api}/issues/{comment.issue}",
            "body": comment.body,
            "user": self.user(comment.user),
            "created_at": iso_time(comment.created_at),
            "updated_at": iso_time(comment.updated_at),
            "author_association": "OWNER" if comment.user == repo.owner else "MEMBER",
            "reactions": self._reaction_rollup(repo, comment),
        }

    def _reaction_rollup(self, repo: FakeRepo, comment: FakeComment) -> dict[str, Any]:
        given = repo.reactions.get(comment.id, [])
        counts = {name: sum(r["content"] == name for r in given) for name in REACTIONS}
        return {
            "url": f"{self.url}/repos/{repo.full_name}/issues/comments/{comment.id}/reactions",
            "total_count": len(given),
            **counts,
        }

    def pull_request(self, repo: FakeRepo, pull: FakePull, *, full: bool) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        html = f"{self.root}/{repo.full_name}/pull/{pull.number}"
        repository = self.repository(repo)

        def end(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{repo.owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "repo": repository,
                "user": self.user(repo.owner),
            }

        links = {
            "self": f"{api}/pulls/{pull.number}",
            "html": html,
            "issue": f"{api}/issues/{pull.number}",
            "comments": f"{api}/issues/{pull.number}/comments",
            "review_comments": f"{api}/pulls/{pull.number}/comments",
            "review_comment": f"{api}/pulls/comments{{/number}}",
            "commits": f"{api}/pulls/{pull.number}/commits",
            "statuses": f"{api}/statuses/{pull.head_sha}",
        }
        data: dict[str, Any] = {
            "url": links["self"],
            "id": pull.id,
            "node_id": f"PR_{pull.id}",
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": links["issue"],
            "commits_url": links["commits"],
            "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"],
            "comments_url": links["comments"],
            "statuses_url": links["statuses"],
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": self.user(pull.user),
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": iso_time(pull.created_at),
            "updated_at": iso_time(pull.updated_at),
            "closed_at": iso_time(pull.updated_at) if pull.state == "closed" else None,
            "merged_at": iso_time(pull.updated_at) if pull.merged else None,
            "merge_commit_sha": pull.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": end(pull.head, pull.head_sha),
            "base": end(pull.base, pull.base_sha),
            "_links": {key: {"href": href} for key, href in links.items()},
            "author_association": "OWNER" if pull.user == repo.owner else "MEMBER",
            "auto_merge": None,
            "draft": pull.draft,
        }
        if full:
            data |= {
                "merged": pull.merged,
                "mergeable": None if pull.merged else True,
                "rebaseable": None if pull.merged else True,
                "mergeable_state": "unknown" if pull.merged else "clean",
                "merged_by": self.user(repo.owner) if pull.merged else None,
                "comments": len(repo.comments.get(pull.number, [])),
                "review_comments": 0,
                "maintainer_can_modify": False,
                "commits": 1,
                "additions": 1,
                "deletions": 0,
                "changed_files": 1,
            }
        return data

    def status(self, repo: FakeRepo, sha: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "url": f"{self.url}/repos/{repo.full_name}/statuses/{sha}",
            "avatar_url": f"{self.root}/avatars/u/{self._user_id(entry['creator'])}",
            "id": entry["id"],
            "node_id": f"SC_{entry['id']}",
            "state": entry["state"],
            "description": entry["description"],
            "target_url": entry["target_url"],
            "context": entry["context"],
            "created_at": iso_time(entry["created_at"]),
            "updated_at": iso_time(entry["created_at"]),
            "creator": self.user(entry["creator"]),
        }

    def git_ref(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}/git"
        sha = repo.refs[name]
        return {
            "ref": name,
            "node_id": f"REF_{hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()}",
            "url": f"{api}/{name}",
            "object": {"type": "commit", "sha": sha, "url": f"{api}/commits/{sha}"},
        }

    def content_entry(self, repo: FakeRepo, path: str, ref: str, data: bytes | None) -> Any:
        """A content-file (``data`` given) or a directory entry (None)."""
        api = f"{self.url}/repos/{repo.full_name}"
        html_kind = "blob" if data is not None else "tree"
        sha = blob_sha(data) if data is not None else blob_sha(path.encode())
        html = f"{self.root}/{repo.full_name}/{html_kind}/{ref}/{path}"
        git = f"{api}/git/{'blobs' if data is not None else 'trees'}/{sha}"
        entry: dict[str, Any] = {
            "type": "file" if data is not None else "dir",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "size": len(data) if data is not None else 0,
            "url": f"{api}/contents/{path}?{urlencode({'ref': ref})}",
            "git_url": git,
            "html_url": html,
            "download_url": (
                f"{self.root}/raw/{repo.full_name}/{ref}/{path}" if data is not None else None
            ),
            "_links": {
                "self": f"{api}/contents/{path}?{urlencode({'ref': ref})}",
                "git": git,
                "html": html,
            },
        }
        return entry
