-- Demo data: a few feedback threads with replies from both sides. Load after schema.sql.

INSERT INTO public.feedback (id, project_id, title) VALUES
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01', '5f0c2b8e-1a7d-4c3b-8e9f-6a1d2c3b4a50', 'Checkout button is hard to find on mobile'),
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e02', '5f0c2b8e-1a7d-4c3b-8e9f-6a1d2c3b4a50', 'Dark mode colours in the pricing table'),
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e03', '5f0c2b8e-1a7d-4c3b-8e9f-6a1d2c3b4a50', 'Typo on the About page')
ON CONFLICT (id) DO NOTHING;

INSERT INTO public.feedback_replies (feedback_id, author_type, author_name, content)
SELECT feedback_id::uuid, author_type, author_name, content FROM (VALUES
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01', 'end_user', 'Maya', 'On my phone the checkout button sits below the fold. I scrolled past it twice.'),
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01', 'agency', 'Studio North', 'Thanks Maya! Which phone and browser are you on?'),
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e01', 'end_user', 'Maya', 'iPhone 13, Safari.'),
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e02', 'end_user', 'Jon', 'The grey on grey in dark mode is unreadable.'),
    ('0b9a7a52-3d1c-4a8e-9f4e-2d7c1b6a5e03', 'end_user', 'Ana', '"Our mision" should be "Our mission".')
) AS v(feedback_id, author_type, author_name, content)
WHERE NOT EXISTS (SELECT 1 FROM public.feedback_replies);
