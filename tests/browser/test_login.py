import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_reviewer_logs_in_and_sees_their_project(live_server, login_page, project, alice, screenshot_dir):
    page = login_page(alice)
    assert page.locator("text=Support assistant").is_visible()
    page.screenshot(path=str(screenshot_dir / "projects.png"), full_page=True)
